#!/usr/bin/env python3
"""Export trained weights (train.py run directory) to an MLX 4-bit checkpoint and verify it.

The checkpoint is written with mlx-lm's own classes and writers, as
tests/fixtures/make_fixtures.py writes its fixtures (cast to bf16 with A_log kept float32,
`quantize_model` 4-bit affine group 64, `save_model`, `save_config`), mtp.* included. The MTP
head is kept at 8 bits (group 64) by default (--mtp-bits; 0 = like the backbone): config.json's
"quantization" block then carries one per-module entry per MTP layer, e.g.
"language_model.mtp.fc": {"group_size": 64, "bits": 8, "mode": "affine"}, which mlx-lm and qwgpu
both read. The directory also gets tokenizer.json, tokenizer_config.json and
generation_config.json.

If the run directory has a best/ folder (train.py --keep-best: the weights of the best
validation), those weights are exported unless --final is given.

Verification (needs torch and mlx / mlx-lm in the same environment):
* the exported directory is loaded again with `mlx_lm.utils.load_model` (and the MTP head with
  make_fixtures' loader); its float32 logits for a held-out text, and the MTP logits for every
  position, are compared with the PyTorch model's (same bf16-rounded weights);
* the same for an unquantized bf16 export (--check-unquantized, written to a temporary folder),
  which must agree to float32 rounding;
* the PyTorch chunked delta rule is compared with the step-by-step recurrence.

Usage: python train/export.py --run DIR --out DIR [--bits 4 --group-size 64 --mtp-bits 8] [--final]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests/fixtures"))

from model import Qwen36  # noqa: E402
from train import load_model_dir  # noqa: E402

import make_fixtures as mf  # noqa: E402  (sets the mlx default device to the CPU)
import mlx.core as mx  # noqa: E402
from mlx.utils import tree_unflatten  # noqa: E402
import mlx_lm.utils as mlx_utils  # noqa: E402


def mlx_config(cfg, tok_ids, quant):
    tc = {
        "model_type": "qwen3_5_text",
        "attention_bias": False,
        "attn_output_gate": True,
        "dtype": "bfloat16",
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "full_attention_interval": cfg.full_attention_interval,
        "layer_types": mf.layer_types_for(cfg.num_hidden_layers, cfg.full_attention_interval),
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "linear_num_key_heads": cfg.linear_num_key_heads,
        "linear_key_head_dim": cfg.linear_key_head_dim,
        "linear_num_value_heads": cfg.linear_num_value_heads,
        "linear_value_head_dim": cfg.linear_value_head_dim,
        "linear_conv_kernel_dim": cfg.linear_conv_kernel_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "mtp_num_hidden_layers": cfg.mtp_num_hidden_layers,
        "mtp_use_dedicated_embeddings": False,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": {
            "mrope_interleaved": True,
            "mrope_section": [11, 11, 10],
            "partial_rotary_factor": cfg.partial_rotary_factor,
            "rope_theta": cfg.rope_theta,
            "rope_type": "default",
        },
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "vocab_size": cfg.vocab_size,
        "bos_token_id": tok_ids["<|endoftext|>"],
        "eos_token_id": tok_ids["<|endoftext|>"],
        "use_cache": True,
    }
    return {
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "model_type": "qwen3_5",
        "text_config": dict(sorted(tc.items())),
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "eos_token_id": [tok_ids["<|im_end|>"], tok_ids["<|endoftext|>"]],
    }


def torch_to_mlx_weights(model: Qwen36):
    """PyTorch state dict -> {MLX name: mx.array} in float32 (conv moved to [C, K, 1])."""
    out = {}
    for k, v in model.state_dict().items():
        a = v.detach().float().cpu().numpy()
        if k.endswith("conv1d.weight"):
            a = np.moveaxis(a, 2, 1)  # [C, 1, K] -> [C, K, 1]
        out["language_model." + k] = mx.array(a)
    return out


def build_mlx_model(config, weights, dtype):
    model_class, args_class = mlx_utils._get_classes(config)
    model = model_class(args_class.from_dict(json.loads(json.dumps(config))))
    text_args = model.language_model.args
    if config["text_config"]["mtp_num_hidden_layers"] > 0:
        model.language_model.mtp = mf.MTPHead(text_args)
    model.update(tree_unflatten(list(weights.items())))
    mf.cast_model(model, dtype)
    # every parameter must have been given
    from mlx.utils import tree_flatten

    names = {k for k, _ in tree_flatten(model.parameters())}
    missing, extra = names - set(weights), set(weights) - names
    if missing or extra:
        raise SystemExit(f"name mismatch: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
    return model


def write_checkpoint(out: Path, config, weights, quant, tok_dir: Path, tok_ids, mtp_quant=None):
    """quant: {"group_size", "bits"} or None (bf16); mtp_quant: the same for language_model.mtp.*
    (None: like the rest)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model = build_mlx_model(config, weights, mx.bfloat16)
    cfg = json.loads(json.dumps(config))
    if quant is not None and mtp_quant is not None:
        def predicate(path, module):
            if path.startswith(mf.MTP_PREFIX):
                return {"group_size": mtp_quant["group_size"], "bits": mtp_quant["bits"], "mode": "affine"}
            return True

        model, cfg = mlx_utils.quantize_model(model, cfg, quant["group_size"], quant["bits"], quant_predicate=predicate)
        mlx_utils.save_model(out, model)
        mlx_utils.save_config(cfg, config_path=out / "config.json")
    else:
        mf.write_mlx_checkpoint(out, {"quant": quant}, model, cfg)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / f, out / f)
    gen = {"bos_token_id": tok_ids["<|endoftext|>"],
           "eos_token_id": [tok_ids["<|im_end|>"], tok_ids["<|endoftext|>"]]}
    (out / "generation_config.json").write_text(json.dumps(gen) + "\n")


def mlx_logits(ckpt: Path, ids):
    """Backbone logits [T, V] and MTP logits [T-1, V] of the reloaded checkpoint, float32."""
    model, config = mlx_utils.load_model(ckpt)
    text_args = model.language_model.args
    head = mf.load_mtp_head(ckpt, config, text_args)
    mf.upcast(model)
    if head is not None:
        mf.upcast(head)
    logits = model(mx.array(ids)[None])[0]
    logits = np.array(logits.astype(mx.float32))
    mtp = None
    if head is not None:
        hidden, _ = mf.backbone_prenorm_hidden(model, list(ids), len(ids))
        mtp, _ = mf.mtp_reference(model, head, hidden, list(ids))
    return logits, mtp


def compare(name, a, b):
    d = np.abs(a - b)
    top1 = float((a.argmax(-1) == b.argmax(-1)).mean())
    pa = torch.log_softmax(torch.from_numpy(a).double(), -1)
    pb = torch.log_softmax(torch.from_numpy(b).double(), -1)
    kl = float((pa.exp() * (pa - pb)).sum(-1).mean())
    r = {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "logit_std": float(a.std()),
         "top1_agree": top1, "kl": kl}
    print(f"  {name:28s} max|d| {r['max_abs']:.3e}  mean|d| {r['mean_abs']:.3e}  (logit std {r['logit_std']:.2f})"
          f"  top-1 agree {100 * top1:.1f}%  KL {kl:.2e}")
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="train.py output (weights-*.safetensors or state.pt)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, default=HERE / "tokenizer")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--mtp-bits", type=int, default=8, help="bits of the MTP head (0: same as --bits)")
    ap.add_argument("--mtp-group-size", type=int, default=64)
    ap.add_argument("--final", action="store_true", help="export the run's last weights even if it has best/")
    ap.add_argument("--check-unquantized", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--text", default=None, help="text for the logits comparison (default: from val.bin)")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--report", type=Path, default=None, help="write the comparison numbers as JSON")
    args = ap.parse_args()

    torch.manual_seed(0)
    run = args.run
    if not args.final and any((args.run / "best").glob("weights-*.safetensors")):
        run = args.run / "best"
    model, meta, _ = load_model_dir(run, "cpu")
    if run != args.run:
        b = meta.get("best", {})
        print(f"using {run} (best validation: step {b.get('step')}, val loss {b.get('val_loss')}, "
              f"MTP agreement {b.get('val_mtp_agree')}; --final for the last weights)")
    # the exported weights are bf16 (A_log float32): compare against the same rounding
    with torch.no_grad():
        for k, p in model.named_parameters():
            if not k.endswith("A_log"):
                p.copy_(p.to(torch.bfloat16).float())
    model.eval()
    cfg = model.c
    tok_json = json.loads((args.tokenizer / "tokenizer.json").read_text())
    tok_ids = {t["content"]: t["id"] for t in tok_json["added_tokens"]}
    if max(tok_ids.values()) >= cfg.vocab_size:
        raise SystemExit("tokenizer ids exceed the model's vocab_size")
    config = mlx_config(cfg, tok_ids, None)
    weights = torch_to_mlx_weights(model)
    quant = {"group_size": args.group_size, "bits": args.bits}
    mtp_quant = ({"group_size": args.mtp_group_size, "bits": args.mtp_bits}
                 if args.mtp_bits and cfg.mtp_num_hidden_layers > 0 else None)
    print(f"exporting step {meta.get('step')} ({meta.get('tokens', 0) / 1e6:.1f} M tokens) -> {args.out}"
          f" ({args.bits}-bit" + (f", MTP {args.mtp_bits}-bit)" if mtp_quant else ")"))
    write_checkpoint(args.out, config, weights, quant, args.tokenizer, tok_ids, mtp_quant)
    size = sum(f.stat().st_size for f in args.out.glob("*.safetensors"))
    print(f"  wrote {args.out} ({size / 1e6:.2f} MB of weights)")

    # ---- verification
    if args.text:
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(args.tokenizer / "tokenizer.json")).encode(args.text).ids[: args.tokens]
    else:
        val = np.fromfile(HERE / "data/val.bin", dtype=np.uint16)
        ids = val[1000: 1000 + args.tokens].astype(np.int64).tolist()
    x = torch.tensor([ids])
    with torch.no_grad():
        t_logits, t_mtp = model(x, next_ids=torch.tensor([ids[1:] + [0]]))
        r_logits, r_mtp = model(x, next_ids=torch.tensor([ids[1:] + [0]]), recurrent=True)
    t_logits, t_mtp = t_logits[0].numpy(), t_mtp[0, :-1].numpy()
    report = {"tokens": len(ids), "export_weight_bytes": size, "step": meta.get("step"), "weights_from": str(run),
              "bits": args.bits, "mtp_bits": args.mtp_bits if mtp_quant else args.bits}
    print("verification (logits of %d tokens):" % len(ids))
    report["torch_chunked_vs_recurrent"] = compare("torch chunked vs recurrent", t_logits, r_logits[0].numpy())
    if args.check_unquantized:
        with tempfile.TemporaryDirectory() as td:
            d = Path(td) / "bf16"
            write_checkpoint(d, config, weights, None, args.tokenizer, tok_ids)
            m_logits, m_mtp = mlx_logits(d, ids)
        report["bf16_backbone"] = compare("mlx-lm bf16 vs torch", m_logits, t_logits)
        report["bf16_mtp"] = compare("mlx-lm bf16 MTP vs torch", m_mtp, t_mtp)
    q_logits, q_mtp = mlx_logits(args.out, ids)
    report["q4_backbone"] = compare(f"mlx-lm {args.bits}-bit vs torch", q_logits, t_logits)
    report["q4_mtp"] = compare(f"mlx-lm {report['mtp_bits']}-bit MTP vs torch", q_mtp, t_mtp)
    # next-token cross entropy of the held-out ids (quality lost to quantization)
    def ce(lg):
        lp = torch.log_softmax(torch.from_numpy(lg).double(), -1)
        return float(-lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean())
    report["ce_torch"], report["ce_q4"] = ce(t_logits), ce(q_logits)
    print(f"  held-out CE: torch {report['ce_torch']:.3f}, mlx-lm {args.bits}-bit {report['ce_q4']:.3f}")
    # Pass = the unquantized export computes what the PyTorch model computes (names, layouts, norms,
    # MTP wiring) and the chunked delta rule equals the recurrence. The 4-bit numbers only report
    # the quantization error (large on an untrained model, whose logits are near ties).
    rel = lambda r: r["max_abs"] / max(1.0, r["logit_std"])  # noqa: E731
    ok = rel(report["torch_chunked_vs_recurrent"]) < 1e-3
    if args.check_unquantized:
        ok &= rel(report["bf16_backbone"]) < 1e-2 and rel(report["bf16_mtp"]) < 1e-2
    print(f"  4-bit: held-out CE {report['ce_q4'] - report['ce_torch']:+.3f} nats vs the bf16 weights")
    report["ok"] = bool(ok)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
