#!/usr/bin/env python3
"""Train the Qwen3.6-architecture model (backbone + MTP head, jointly) on train/data/*.bin.

Needs only torch, numpy and safetensors (tokenizers, if present, for the text samples).

Loss = CE(backbone logits at t, id_{t+1}) + mtp_weight * MTP loss, the MTP row t being built from the
backbone's pre-norm hidden state at t and the embedding of id_{t+1}. MTP loss =
(1 - d) * CE(MTP logits at t, id_{t+2}) + d * H(p_backbone(. | row t+1), p_MTP(. | row t)), d = --mtp-distill:
the soft part (self-distillation) trains the draft against the backbone's own (detached) next-token
distribution at t+1, which is what greedy speculative verification compares the draft with.

Keep-best: at every validation the weights with the lowest held-out loss so far (--keep-best) are
written to OUT/best/ (same shard format, plus best.json); export.py uses them when present.

Outputs in --out:
  best/                               the shards + best.json of the best validation (--keep-best)
  weights-0000K-of-0000N.safetensors  bf16 weights (MLX names without `language_model.`, conv in
                                      PyTorch layout), shards of at most --shard-mib; the first
                                      shard's metadata holds config + progress (step, tokens,
                                      seconds) so the shards alone are enough to resume or export.
  loss.csv                            one row per log interval (+ validation rows)
  samples.txt                         greedy continuations of a few prompts at the end
  state.pt                            full float32 state + optimizer (for a same-machine resume;
                                      --no-state to skip)
  log.txt                             the console log

Resume: --resume DIR loads DIR/state.pt if present (exact), else the shards (fresh optimizer
moments, short re-warm-up); loss.csv rows from DIR are carried over.

Examples:
  python train/train.py --preset tiny --minutes 1 --out /tmp/run       # CPU smoke test
  python train/train.py --minutes 8 --total-minutes 32 --out $OUT       # one GPU call
  python train/train.py --minutes 8 --total-minutes 32 --resume $OUT --out $OUT
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from model import PRESETS, Config, Qwen36  # noqa: E402

CSV_FIELDS = ["step", "tokens", "seconds", "lr", "loss", "mtp_loss", "mtp_acc", "mtp_agree", "mtp_kl", "val_loss",
              "val_mtp_loss", "val_mtp_agree", "val_mtp_kl", "tok_per_s"]


def log(msg, fh=None):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if fh:
        fh.write(line + "\n")
        fh.flush()


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def load_tokens(path: Path):
    """uint16 token file: PATH.xz (xz-compressed, as corpus.py writes train.bin) if present, else PATH."""
    xz = path.with_name(path.name + ".xz")
    if xz.exists():
        import lzma

        return np.frombuffer(lzma.decompress(xz.read_bytes()), dtype=np.uint16)
    if path.exists():
        return np.fromfile(path, dtype=np.uint16)
    raise SystemExit(f"{xz} (or {path.name}) not found: run train/corpus.py")


class Batches:
    """Random windows of T + 2 tokens from a uint16 token file."""

    def __init__(self, path: Path, T: int, batch: int, seed: int, device):
        self.data = load_tokens(path)
        self.T, self.batch, self.device = T, batch, device
        self.rng = np.random.default_rng(seed)
        if len(self.data) < T + 3:
            raise SystemExit(f"{path}: {len(self.data)} tokens, fewer than a window of {T + 2}")

    def sample(self, rng=None):
        rng = rng or self.rng
        starts = rng.integers(0, len(self.data) - self.T - 2, size=self.batch)
        w = np.stack([self.data[s: s + self.T + 2] for s in starts]).astype(np.int64)
        w = torch.from_numpy(w)
        if self.device.type == "cuda":
            w = w.pin_memory().to(self.device, non_blocking=True)
        return w


# ------------------------------------------------------------------------------------------------
# Weights I/O
# ------------------------------------------------------------------------------------------------


def save_shards(model: Qwen36, out: Path, meta: dict, shard_mib: float, prefix="weights"):
    from safetensors.torch import save_file

    for old in out.glob(f"{prefix}-*.safetensors"):
        old.unlink()
    tensors = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    # A_log is kept in float32 (as in the MLX checkpoints)
    for k in tensors:
        if k.endswith("A_log"):
            tensors[k] = model.state_dict()[k].detach().float().cpu().contiguous()
    limit = int(shard_mib * 1024 * 1024) - 64 * 1024
    shards, size = [], 0
    for k in sorted(tensors):
        nb = tensors[k].numel() * tensors[k].element_size()
        if not shards or size + nb > limit:
            shards.append({})
            size = 0
        shards[-1][k] = tensors[k]
        size += nb
    paths = []
    for i, sh in enumerate(shards):
        p = out / f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        md = {"format": "pt"}
        if i == 0:
            md["qwgpu_train"] = json.dumps(meta)
        save_file(sh, str(p), metadata=md)
        paths.append(p)
    return paths


def load_shards(d: Path, prefix="weights"):
    from safetensors import safe_open

    files = sorted(d.glob(f"{prefix}-*.safetensors"))
    if not files:
        return None, None
    tensors, meta = {}, None
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            md = fh.metadata() or {}
            if "qwgpu_train" in md:
                meta = json.loads(md["qwgpu_train"])
            for k in fh.keys():
                tensors[k] = fh.get_tensor(k).float()
    return tensors, meta


def load_model_dir(d: Path, device="cpu"):
    """Model + meta from a run directory (state.pt preferred, else the shards)."""
    st = d / "state.pt"
    if st.exists():
        s = torch.load(st, map_location="cpu", weights_only=False)
        model = Qwen36(Config.from_dict(s["meta"]["config"]))
        model.load_state_dict(s["model"])
        return model.to(device), s["meta"], s
    tensors, meta = load_shards(d)
    if tensors is None:
        raise SystemExit(f"no state.pt or weights-*.safetensors in {d}")
    model = Qwen36(Config.from_dict(meta["config"]))
    model.load_state_dict(tensors)
    return model.to(device), meta, None


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def param_groups(model, wd):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.ndim >= 2 and "conv1d" not in n else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def losses(model, w, mtp_weight, mtp_distill=0.0):
    """w: [B, T + 2] -> (total, ce, mtp_ce, mtp_acc, mtp_agree, mtp_kl).

    MTP row t predicts id_{t+2}; so does the backbone's row t + 1. mtp_kl is
    KL(p_backbone(row t+1) || p_MTP(row t)) over the rows that have a teacher row (t < T - 1);
    the self-distillation term is the matching soft cross-entropy (the teacher detached), weighted
    mtp_distill against the hard-label CE."""
    T = w.shape[1] - 2
    ids, tgt1, tgt2 = w[:, :T], w[:, 1:T + 1], w[:, 2:T + 2]
    logits, mtp = model(ids, next_ids=tgt1)
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.float().reshape(-1, V), tgt1.reshape(-1))
    if mtp is None:
        z = torch.zeros((), device=w.device)
        return ce, ce, z, z, z, z
    mce = F.cross_entropy(mtp.float().reshape(-1, V), tgt2.reshape(-1))
    # teacher: the backbone's next-token distribution at row t + 1 (no gradient into the backbone)
    t_logp = torch.log_softmax(logits[:, 1:].detach().float(), -1)
    s_logp = torch.log_softmax(mtp[:, :-1].float(), -1)
    t_p = t_logp.exp()
    soft = -(t_p * s_logp).sum(-1).mean()  # H(teacher, student)
    with torch.no_grad():
        kl = soft - (-(t_p * t_logp).sum(-1).mean())
        mp = mtp.argmax(-1)
        acc = (mp == tgt2).float().mean()
        # greedy acceptance proxy: MTP draft for t+2 (row t) vs the backbone's choice for t+2 (row t+1)
        agree = (mp[:, :-1] == logits[:, 1:].argmax(-1)).float().mean()
    mtp_loss = (1.0 - mtp_distill) * mce + mtp_distill * soft if mtp_distill else mce
    return ce + mtp_weight * mtp_loss, ce, mce, acc, agree, kl


@torch.no_grad()
def evaluate(model, val: Batches, n_batches, amp, device):
    model.eval()
    rng = np.random.default_rng(12345)
    tot = np.zeros(4)
    for _ in range(n_batches):
        w = val.sample(rng)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            _, ce, mce, _, agree, kl = losses(model, w, 0.0)
        tot += [ce.item(), mce.item(), agree.item(), kl.item()]
    model.train()
    return tot / n_batches


@torch.no_grad()
def sample_text(model, tok_dir: Path, device, prompts, n_new=48):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return "(tokenizers not installed: no samples)\n"
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    model.eval()
    out = []
    for p in prompts:
        ids = tok.encode(p).ids
        for _ in range(n_new):
            x = torch.tensor([ids[-512:]], device=device)
            logits, _ = model(x)
            ids.append(int(logits[0, -1].argmax()))
        out.append(f"=== {p!r}\n{tok.decode(ids)}\n")
    model.train()
    return "\n".join(out)


SAMPLE_PROMPTS = [
    "Ownership is",
    "The borrow checker",
    "A closure is",
    "<|im_start|>user\nWhat is a trait?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=HERE / "data")
    ap.add_argument("--tokenizer", type=Path, default=HERE / "tokenizer")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--resume", type=Path, default=None)
    ap.add_argument("--preset", default="base", choices=sorted(PRESETS))
    ap.add_argument("--config", type=str, default=None, help="JSON overrides of the model config")
    ap.add_argument("--minutes", type=float, default=1.0, help="wall-clock training time of this call")
    ap.add_argument("--total-minutes", type=float, default=None,
                    help="training time over all calls (sets the LR schedule; default: time already "
                         "trained + --minutes)")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rewarmup", type=int, default=50, help="warm-up steps after a resume without optimizer")
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--mtp-weight", type=float, default=0.5, help="weight of the MTP loss")
    ap.add_argument("--mtp-distill", type=float, default=0.7,
                    help="share of the MTP loss that is the soft CE against the backbone's (detached) "
                         "distribution for the same token (self-distillation); the rest is the hard CE "
                         "on id_{t+2}. 0 = hard labels only")
    ap.add_argument("--keep-best", default="val_loss", choices=["val_loss", "val_mtp_agree", "none"],
                    help="write the weights of the best validation so far to OUT/best/ (val_loss: lowest "
                         "held-out backbone loss; val_mtp_agree: highest held-out MTP agreement)")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--eval-every", type=float, default=1.0, help="minutes between validation runs")
    ap.add_argument("--eval-batches", type=int, default=8, help="validation batches (fixed windows of val.bin)")
    ap.add_argument("--save-every", type=float, default=4.0, help="minutes between checkpoints")
    ap.add_argument("--shard-mib", type=float, default=15.0)
    ap.add_argument("--no-state", action="store_true", help="do not write state.pt")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    t_start = time.time()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    amp = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    logf = open(args.out / "log.txt", "a")
    log(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch {torch.__version__}", logf)

    torch.manual_seed(args.seed)
    resumed_state = None
    csv_rows = []
    if args.resume is not None:
        model, meta, resumed_state = load_model_dir(args.resume, "cpu")
        cfg = model.c
        prev = args.resume / "loss.csv"
        if prev.exists():
            with open(prev) as f:
                csv_rows = list(csv.DictReader(f))
        log(f"resumed from {args.resume}: step {meta['step']}, {meta['tokens'] / 1e6:.1f} M tokens, "
            f"{meta['seconds'] / 60:.1f} min ({'with' if resumed_state else 'without'} optimizer state)", logf)
    else:
        d = dict(PRESETS[args.preset])
        if args.config:
            d.update(json.loads(args.config))
        vocab_file = args.tokenizer / "tokenizer.json"
        if vocab_file.exists() and "vocab_size" not in d:
            n = len(json.loads(vocab_file.read_text())["model"]["vocab"]) + 33
            d["vocab_size"] = int(math.ceil(n / 64) * 64)
        cfg = Config.from_dict({**Config().to_dict(), **d})
        model = Qwen36(cfg)
        meta = {"step": 0, "tokens": 0, "seconds": 0.0}
    meta["config"] = cfg.to_dict()
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"config {json.dumps(cfg.to_dict())}", logf)
    log(f"parameters {n_params / 1e6:.2f} M", logf)

    train = Batches(args.data / "train.bin", args.seq, args.batch, args.seed + meta["step"], device)
    val = Batches(args.data / "val.bin", args.seq, min(args.batch, 16), 0, device)
    log(f"data: train {len(train.data) / 1e6:.2f} M tokens, val {len(val.data) / 1e6:.2f} M tokens; "
        f"batch {args.batch} x {args.seq}", logf)
    if int(train.data.max()) >= cfg.vocab_size:
        raise SystemExit(f"token id {int(train.data.max())} >= vocab_size {cfg.vocab_size}")

    opt = torch.optim.AdamW(param_groups(model, args.wd), lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
                            fused=device.type == "cuda")
    if resumed_state is not None and "optim" in resumed_state:
        opt.load_state_dict(resumed_state["optim"])
    warm = args.warmup if meta["step"] == 0 else (0 if resumed_state and "optim" in resumed_state else args.rewarmup)
    # LR schedule length: --total-minutes, else what has been trained so far plus this call
    total_s = 60 * args.total_minutes if args.total_minutes else meta["seconds"] + 60 * args.minutes
    step0 = meta["step"]

    fwd = torch.compile(model) if args.compile else model

    def lr_at(step, seconds):
        frac = min(1.0, seconds / total_s)
        cos = args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac))
        w = min(1.0, (step - step0 + 1) / warm) if warm else 1.0
        return args.lr * cos * w

    def checkpoint(final=False):
        meta_out = dict(meta, config=cfg.to_dict(), n_params=n_params, args={k: str(v) for k, v in vars(args).items()})
        save_shards(model, args.out, meta_out, args.shard_mib)
        if not args.no_state:
            tmp = args.out / "state.pt.tmp"
            torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "meta": meta_out}, tmp)
            os.replace(tmp, args.out / "state.pt")
        with open(args.out / "loss.csv", "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            wr.writeheader()
            for r in csv_rows:
                wr.writerow({k: r.get(k, "") for k in CSV_FIELDS})
        log(f"checkpoint at step {meta['step']} ({'final' if final else 'periodic'})", logf)

    best_dir = args.out / "best"
    best = {"score": None}
    if args.keep_best != "none" and (best_dir / "best.json").exists():
        best = json.loads((best_dir / "best.json").read_text())  # resumed run: beat the earlier best

    def validate():
        v = evaluate(model, val, args.eval_batches, amp, device)
        csv_rows.append({"step": meta["step"], "tokens": meta["tokens"], "seconds": f"{meta['seconds']:.1f}",
                         "val_loss": f"{v[0]:.4f}", "val_mtp_loss": f"{v[1]:.4f}", "val_mtp_agree": f"{v[2]:.4f}",
                         "val_mtp_kl": f"{v[3]:.4f}"})
        msg = f"val  loss {v[0]:.3f}  mtp {v[1]:.3f}  agree {v[2]:.3f}  kl {v[3]:.3f}"
        if args.keep_best != "none":
            score = v[0] if args.keep_best == "val_loss" else -v[2]
            if best["score"] is None or score < best["score"]:
                best.update(score=float(score), step=meta["step"], tokens=meta["tokens"], seconds=meta["seconds"],
                            val_loss=float(v[0]), val_mtp_loss=float(v[1]), val_mtp_agree=float(v[2]),
                            val_mtp_kl=float(v[3]), criterion=args.keep_best)
                best_dir.mkdir(parents=True, exist_ok=True)
                meta_out = dict(meta, config=cfg.to_dict(), n_params=n_params, best=best,
                                args={k: str(x) for k, x in vars(args).items()})
                save_shards(model, best_dir, meta_out, args.shard_mib)
                (best_dir / "best.json").write_text(json.dumps(best, indent=2) + "\n")
                msg += "  (best so far: saved)"
        log(msg, logf)

    budget = 60 * args.minutes
    t_train0 = time.time()
    seconds0 = meta["seconds"]
    last_eval = last_save = time.time()
    acc_n = 0
    acc_t = None
    t_log, tok_log = time.time(), 0
    model.train()
    while True:
        elapsed = time.time() - t_train0
        if elapsed >= budget or (args.max_steps and meta["step"] - step0 >= args.max_steps):
            break
        lr = lr_at(meta["step"], seconds0 + elapsed)
        for g in opt.param_groups:
            g["lr"] = lr
        w = train.sample()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            loss, ce, mce, macc, agree, kl = losses(fwd, w, args.mtp_weight, args.mtp_distill)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        meta["step"] += 1
        meta["tokens"] += w.shape[0] * (w.shape[1] - 2)
        tok_log += w.shape[0] * (w.shape[1] - 2)
        acc_t = torch.stack([ce.detach(), mce.detach(), macc, agree, kl]).float() + (acc_t if acc_n else 0)
        acc_n += 1
        now = time.time()
        meta["seconds"] = seconds0 + (now - t_train0)
        if meta["step"] % args.log_every == 0:
            a = (acc_t / acc_n).tolist()  # one device sync per log interval
            tps = tok_log / (now - t_log)
            row = {"step": meta["step"], "tokens": meta["tokens"], "seconds": f"{meta['seconds']:.1f}",
                   "lr": f"{lr:.3e}", "loss": f"{a[0]:.4f}", "mtp_loss": f"{a[1]:.4f}", "mtp_acc": f"{a[2]:.4f}",
                   "mtp_agree": f"{a[3]:.4f}", "mtp_kl": f"{a[4]:.4f}", "tok_per_s": f"{tps:.0f}"}
            csv_rows.append(row)
            log(f"step {meta['step']:6d}  loss {a[0]:.3f}  mtp {a[1]:.3f}  mtp_acc {a[2]:.3f}  agree {a[3]:.3f}"
                f"  kl {a[4]:.3f}  lr {lr:.2e}  {tps / 1e3:.1f} k tok/s", logf)
            acc_n = 0
            t_log, tok_log = now, 0
        if now - last_eval >= 60 * args.eval_every:
            validate()
            last_eval = t_log = time.time()
            tok_log = 0
        if now - last_save >= 60 * args.save_every:
            checkpoint()
            last_save = t_log = time.time()
            tok_log = 0

    validate()
    checkpoint(final=True)
    if best["score"] is not None:
        log(f"best validation: step {best['step']} ({best['tokens'] / 1e6:.1f} M tokens), val loss "
            f"{best['val_loss']:.3f}, MTP agreement {best['val_mtp_agree']:.3f} -> {args.out / 'best'}", logf)
    if (args.tokenizer / "tokenizer.json").exists():
        txt = sample_text(model, args.tokenizer, device, SAMPLE_PROMPTS)
        (args.out / "samples.txt").write_text(txt)
        log("samples:\n" + txt, logf)
    log(f"done: step {meta['step']}, {meta['tokens'] / 1e6:.1f} M tokens, {meta['seconds'] / 60:.1f} min trained, "
        f"call took {(time.time() - t_start) / 60:.1f} min", logf)


if __name__ == "__main__":
    main()
