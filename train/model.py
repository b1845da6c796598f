"""A Qwen3.5/3.6 hybrid language model with its MTP head, in plain PyTorch.

Parameter names and value conventions are those of an MLX checkpoint under `language_model.`
(norm weights are plain multiplicative weights, the conv weight is PyTorch's [C, 1, K], moved to
MLX's [C, K, 1] on export), so the exporter only renames and reshapes. The formulas follow the
spec (shared/spec/qwen3_6.md §4 and §6):

* decoder layer: x + mixer(rmsnorm(x)), then + SwiGLU(rmsnorm(.));
* Gated-DeltaNet (layer i with (i + 1) % full_attention_interval != 0): in_proj_qkv -> causal
  depthwise conv (4 taps, no bias) -> silu -> q, k, v; q = rmsnorm(q) / Dk, k = rmsnorm(k) / sqrt(Dk)
  (no weight, eps 1e-6); beta = sigmoid(b); g = exp(-exp(A_log) * softplus(a + dt_bias)); per value
  head h (key head h // (Hv / Hk)) the delta rule S <- g S; S <- S + beta (v - S k) k^T; o = S q;
  gated RMSNorm rmsnorm(o) * w * silu(z); out_proj;
* gated attention: q_proj gives per head [query | gate]; q/k RMSNorm per head; RoPE on the first
  head_dim * partial_rotary_factor dims (rotate-half pairing); causal GQA softmax attention with scale
  1/sqrt(head_dim); o * sigmoid(gate); o_proj;
* MTP head: row t = fc([rmsnorm(embed(id_{t+1})); rmsnorm(h_t)]) with h_t the backbone's pre-final-norm
  hidden state, one full-attention decoder layer over the rows (causal, position t), norm, the shared
  lm_head: predicts id_{t+2}.

The delta rule is computed in float32 in chunks (exact reformulation of the recurrence, see
`delta_rule_chunked`); `delta_rule_recurrent` is the step-by-step reference used by the self-test.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class Config:
    vocab_size: int = 8192
    hidden_size: int = 384
    intermediate_size: int = 1024
    num_hidden_layers: int = 8
    full_attention_interval: int = 4
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    head_dim: int = 64
    linear_num_key_heads: int = 4
    linear_key_head_dim: int = 64
    linear_num_value_heads: int = 8
    linear_value_head_dim: int = 64
    linear_conv_kernel_dim: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000000.0
    partial_rotary_factor: float = 0.25
    tie_word_embeddings: bool = False
    mtp_num_hidden_layers: int = 1
    max_position_embeddings: int = 8192

    def is_linear(self, i: int) -> bool:
        return (i + 1) % self.full_attention_interval != 0

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


PRESETS = {
    # the intended default model (~24 M parameters incl. MTP; ~14 MB in MLX 4-bit)
    "base": dict(),
    # smaller
    "small": dict(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2,
                  linear_num_key_heads=2, linear_num_value_heads=4),
    # CPU smoke test
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=32, linear_num_key_heads=1, linear_key_head_dim=32,
                 linear_num_value_heads=2, linear_value_head_dim=32),
}


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


def linear(i, o):
    return nn.Linear(i, o, bias=False)


# ------------------------------------------------------------------------------------------------
# Delta rule
# ------------------------------------------------------------------------------------------------


def delta_rule_recurrent(q, k, v, g_log, beta, state=None):
    """Reference. q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; g_log, beta: [B, H, T] (all float32).
    state S: [B, H, Dv, Dk]. Returns (o [B, H, T, Dv], S)."""
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    S = q.new_zeros(B, H, Dv, Dk) if state is None else state
    outs = []
    for t in range(T):
        S = S * g_log[:, :, t, None, None].exp()
        m = torch.einsum("bhij,bhj->bhi", S, k[:, :, t])
        delta = beta[:, :, t, None] * (v[:, :, t] - m)
        S = S + delta[..., :, None] * k[:, :, t, None, :]
        outs.append(torch.einsum("bhij,bhj->bhi", S, q[:, :, t]))
    return torch.stack(outs, 2), S


def delta_rule_chunked(q, k, v, g_log, beta, state=None, chunk: int = 64):
    """The same recurrence, chunk by chunk.

    Within a chunk with cumulative log decay c_t (gamma_t = exp(c_t)) the state after step t is
    S_t = gamma_t S_0 + sum_{s<=t} (gamma_t / gamma_s) u_s k_s^T, where the rank-one terms satisfy
    u_t = beta_t (v_t - gamma_t S_0 k_t - sum_{s<t} (gamma_t / gamma_s) (k_s . k_t) u_s).
    In matrix form (I + A) U = diag(beta) V - diag(beta gamma) K S_0^T with A strictly lower
    triangular, A[t, s] = beta_t (gamma_t / gamma_s) (k_t . k_s); it is solved once per chunk.
    Outputs: o_t = gamma_t S_0 q_t + sum_{s<=t} (gamma_t / gamma_s) (k_s . q_t) u_s; the next chunk
    starts from S_C. Only the S_0 terms run sequentially over chunks."""
    B, H, T, Dk = k.shape
    Dv = v.shape[-1]
    C = chunk
    pad = (-T) % C
    if pad:
        # identity steps: k = v = q = 0, beta = 0, g = 1
        q = F.pad(q, (0, 0, 0, pad))
        k = F.pad(k, (0, 0, 0, pad))
        v = F.pad(v, (0, 0, 0, pad))
        g_log = F.pad(g_log, (0, pad))
        beta = F.pad(beta, (0, pad))
    N = (T + pad) // C
    q = q.reshape(B, H, N, C, Dk)
    k = k.reshape(B, H, N, C, Dk)
    v = v.reshape(B, H, N, C, Dv)
    g_log = g_log.reshape(B, H, N, C)
    beta = beta.reshape(B, H, N, C)

    cum = g_log.cumsum(-1)  # [B, H, N, C]
    idx = torch.arange(C, device=q.device)
    incl = idx[:, None] >= idx[None, :]  # s <= t
    strict = idx[:, None] > idx[None, :]  # s < t
    diff = cum[..., :, None] - cum[..., None, :]  # [.., t, s]
    decay = torch.exp(diff.masked_fill(~incl, float("-inf")))  # gamma_t / gamma_s for s <= t, else 0

    kk = k @ k.transpose(-1, -2)
    A = (beta[..., :, None] * kk * decay).masked_fill(~strict, 0.0)
    eye = torch.eye(C, device=q.device, dtype=q.dtype)
    rhs = torch.cat([beta[..., None] * v, (beta * cum.exp())[..., None] * k], -1)
    sol = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    W, Wk = sol[..., :Dv], sol[..., Dv:]
    P = (q @ k.transpose(-1, -2)) * decay
    qg = q * cum.exp()[..., None]
    to_end = torch.exp(cum[..., -1:] - cum)  # gamma_C / gamma_s
    g_end = cum[..., -1].exp()  # [B, H, N]

    S = q.new_zeros(B, H, Dv, Dk) if state is None else state
    outs = []
    for n in range(N):
        St = S.transpose(-1, -2)  # [B, H, Dk, Dv]
        U = W[:, :, n] - Wk[:, :, n] @ St  # [B, H, C, Dv]
        outs.append(qg[:, :, n] @ St + P[:, :, n] @ U)
        S = g_end[:, :, n, None, None] * S + (U * to_end[:, :, n, :, None]).transpose(-1, -2) @ k[:, :, n]
    o = torch.stack(outs, 2).reshape(B, H, N * C, Dv)[:, :, :T]
    return o, S


# ------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------


class GatedDeltaNet(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.hk, self.dk = c.linear_num_key_heads, c.linear_key_head_dim
        self.hv, self.dv = c.linear_num_value_heads, c.linear_value_head_dim
        assert self.hv % self.hk == 0
        self.key_dim, self.value_dim = self.hk * self.dk, self.hv * self.dv
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.K = c.linear_conv_kernel_dim
        self.in_proj_qkv = linear(c.hidden_size, self.conv_dim)
        self.in_proj_z = linear(c.hidden_size, self.value_dim)
        self.in_proj_b = linear(c.hidden_size, self.hv)
        self.in_proj_a = linear(c.hidden_size, self.hv)
        self.conv1d = nn.Module()
        self.conv1d.weight = nn.Parameter(torch.empty(self.conv_dim, 1, self.K))
        self.dt_bias = nn.Parameter(torch.empty(self.hv))
        self.A_log = nn.Parameter(torch.empty(self.hv))
        self.norm = RMSNorm(self.dv, c.rms_norm_eps)
        self.out_proj = linear(self.value_dim, c.hidden_size)

    def forward(self, x, recurrent: bool = False):
        B, T, _ = x.shape
        qkv = self.in_proj_qkv(x)
        z = self.in_proj_z(x).reshape(B, T, self.hv, self.dv)
        b = self.in_proj_b(x)
        a = self.in_proj_a(x)
        # causal depthwise conv: tap K-1 multiplies the current token
        w = self.conv1d.weight.to(qkv.dtype)
        conv = F.conv1d(F.pad(qkv.transpose(1, 2), (self.K - 1, 0)), w, groups=self.conv_dim)
        y = F.silu(conv.transpose(1, 2))
        q, k, v = torch.split(y, [self.key_dim, self.key_dim, self.value_dim], -1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q = q.float().reshape(B, T, self.hk, self.dk)
            k = k.float().reshape(B, T, self.hk, self.dk)
            v = v.float().reshape(B, T, self.hv, self.dv)
            eps = 1e-6
            q = rms_norm(q, None, eps) * (self.dk ** -1.0)
            k = rms_norm(k, None, eps) * (self.dk ** -0.5)
            r = self.hv // self.hk
            if r > 1:  # value head h reads key head h // r
                q = q.repeat_interleave(r, dim=2)
                k = k.repeat_interleave(r, dim=2)
            beta = torch.sigmoid(b.float())
            g_log = -torch.exp(self.A_log.float()) * F.softplus(a.float() + self.dt_bias.float())
            args = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), g_log.transpose(1, 2),
                    beta.transpose(1, 2))
            o, _ = delta_rule_recurrent(*args) if recurrent else delta_rule_chunked(*args)
            o = o.transpose(1, 2)  # [B, T, Hv, Dv]
            o = rms_norm(o, self.norm.weight, self.c.rms_norm_eps) * F.silu(z.float())
        o = o.to(x.dtype)
        return self.out_proj(o.reshape(B, T, self.value_dim))


def rope_tables(c: Config, T: int, device, offset: int = 0):
    rd = int(c.head_dim * c.partial_rotary_factor)
    inv = c.rope_theta ** (-torch.arange(0, rd, 2, device=device, dtype=torch.float32) / rd)
    pos = torch.arange(offset, offset + T, device=device, dtype=torch.float32)
    ang = pos[:, None] * inv[None, :]  # [T, rd/2]
    return ang.cos(), ang.sin(), rd


def apply_rope(x, cos, sin, rd):
    """x: [B, H, T, D] float32; rotate-half on the first rd dims."""
    half = rd // 2
    x1, x2, rest = x[..., :half], x[..., half:rd], x[..., rd:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], -1)


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.h, self.kvh, self.d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = linear(c.hidden_size, self.h * self.d * 2)
        self.k_proj = linear(c.hidden_size, self.kvh * self.d)
        self.v_proj = linear(c.hidden_size, self.kvh * self.d)
        self.o_proj = linear(self.h * self.d, c.hidden_size)
        self.q_norm = RMSNorm(self.d, c.rms_norm_eps)
        self.k_norm = RMSNorm(self.d, c.rms_norm_eps)

    def forward(self, x, rope):
        B, T, _ = x.shape
        qg = self.q_proj(x).reshape(B, T, self.h, 2 * self.d)
        q, gate = qg[..., : self.d], qg[..., self.d:]
        k = self.k_proj(x).reshape(B, T, self.kvh, self.d)
        v = self.v_proj(x).reshape(B, T, self.kvh, self.d)
        cos, sin, rd = rope
        q = apply_rope(rms_norm(q, self.q_norm.weight, self.c.rms_norm_eps).float().transpose(1, 2), cos, sin, rd)
        k = apply_rope(rms_norm(k, self.k_norm.weight, self.c.rms_norm_eps).float().transpose(1, 2), cos, sin, rd)
        v = v.transpose(1, 2)
        dt = v.dtype
        q, k = q.to(dt), k.to(dt)
        g = self.h // self.kvh
        if g > 1:  # query head h reads kv head h // g
            k = k.repeat_interleave(g, dim=1)
            v = v.repeat_interleave(g, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.d ** -0.5)
        o = o.transpose(1, 2).reshape(B, T, self.h * self.d)
        o = o * torch.sigmoid(gate.reshape(B, T, self.h * self.d))
        return self.o_proj(o)


class MLP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.gate_proj = linear(c.hidden_size, c.intermediate_size)
        self.up_proj = linear(c.hidden_size, c.intermediate_size)
        self.down_proj = linear(c.intermediate_size, c.hidden_size)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, c: Config, linear_attn: bool):
        super().__init__()
        self.is_linear = linear_attn
        if linear_attn:
            self.linear_attn = GatedDeltaNet(c)
        else:
            self.self_attn = Attention(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, rope, recurrent=False):
        h = self.input_layernorm(x)
        r = self.linear_attn(h, recurrent) if self.is_linear else self.self_attn(h, rope)
        h = x + r
        return h + self.mlp(self.post_attention_layernorm(h))


class TextModel(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(c, c.is_linear(i)) for i in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class MTP(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.pre_fc_norm_embedding = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.pre_fc_norm_hidden = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.fc = linear(2 * c.hidden_size, c.hidden_size)
        self.layers = nn.ModuleList([DecoderLayer(c, False) for _ in range(c.mtp_num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class Qwen36(nn.Module):
    """Parameter names = the MLX checkpoint's, without the `language_model.` prefix."""

    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.model = TextModel(c)
        if not c.tie_word_embeddings:
            self.lm_head = linear(c.hidden_size, c.vocab_size)
        if c.mtp_num_hidden_layers > 0:
            self.mtp = MTP(c)
        self.init_weights()

    def init_weights(self, std: float = 0.02):
        c = self.c
        out_std = std / math.sqrt(2 * c.num_hidden_layers)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if name.endswith("A_log"):
                    p.copy_(torch.log(torch.empty_like(p).uniform_(1.0, 16.0)))
                elif name.endswith("dt_bias"):
                    dt = torch.exp(torch.empty_like(p).uniform_(math.log(1e-3), math.log(1e-1)))
                    p.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
                elif name.endswith("conv1d.weight"):
                    nn.init.uniform_(p, -1 / math.sqrt(c.linear_conv_kernel_dim), 1 / math.sqrt(c.linear_conv_kernel_dim))
                elif p.ndim == 1:
                    p.fill_(1.0)
                elif name.endswith(("o_proj.weight", "out_proj.weight", "down_proj.weight")):
                    nn.init.normal_(p, std=out_std)
                else:
                    nn.init.normal_(p, std=std)

    def head(self, x):
        if self.c.tie_word_embeddings:
            return F.linear(x, self.model.embed_tokens.weight)
        return self.lm_head(x)

    def backbone(self, ids, recurrent=False):
        """ids [B, T] -> pre-final-norm hidden [B, T, H]."""
        x = self.model.embed_tokens(ids)
        rope = rope_tables(self.c, ids.shape[1], ids.device)
        for layer in self.model.layers:
            x = layer(x, rope, recurrent)
        return x

    def mtp_logits(self, h, next_ids):
        """h [B, N, H] pre-norm states at positions 0..N-1, next_ids [B, N] the ids at 1..N ->
        MTP logits [B, N, V] predicting the ids at 2..N+1."""
        m = self.mtp
        e = m.pre_fc_norm_embedding(self.model.embed_tokens(next_ids))
        f = m.fc(torch.cat([e, m.pre_fc_norm_hidden(h)], -1))
        rope = rope_tables(self.c, h.shape[1], h.device)
        for layer in m.layers:
            f = layer(f, rope)
        return self.head(m.norm(f))

    def forward(self, ids, next_ids=None, recurrent=False):
        """Returns (logits [B, T, V], mtp_logits [B, T, V] or None). next_ids[:, t] must be the id at
        t + 1 (for training: the targets)."""
        h = self.backbone(ids, recurrent)
        logits = self.head(self.model.norm(h))
        mtp = None
        if next_ids is not None and self.c.mtp_num_hidden_layers > 0:
            mtp = self.mtp_logits(h, next_ids)
        return logits, mtp
