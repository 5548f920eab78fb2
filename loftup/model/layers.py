"""Building blocks of the LoftUp upsampler, with the official state-dict names.

Shapes follow the official code: images and maps are (B, C, H, W), tokens (B, N, D).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..kernels import AttentionDispatcher
from ..kernels.linear import linear
from ..runtime.profiling import stage


def coord_grid(n: int, device=None) -> torch.Tensor:
    """Float32 `linspace(-1, 1, n)` exactly as the official code builds coordinates.

    While torch.export traces (ONNX export) `n` is symbolic, and linspace would pin it to the
    example size; the traced graph then builds the same values from arange instead.
    """
    if torch.compiler.is_exporting():
        return traceable_coord_grid(n, device)
    return torch.linspace(-1, 1, n, device=device)


def traceable_coord_grid(n, device=None) -> torch.Tensor:
    """linspace(-1, 1, n) from arange, for symbolic n; within one float32 ulp of linspace.

    Same two-sided formula as PyTorch's CPU kernel (start + i*step for the first half,
    end - (n-1-i)*step for the rest); linspace rounds i*step+start once (fused multiply-add),
    this rounds twice. Exports as Range/Cast/Mul/Sub/Where, which TensorRT parses.
    """
    idx = torch.arange(n, device=device).to(torch.float32)  # (n,) 0, 1, ..., n-1
    last = idx[-1:]  # (1,) n - 1, a tensor so the division stays in the graph
    step = 2.0 / last.clamp_min(1.0)
    first_half = 2.0 * idx < last.clamp_min(0.5)  # i < n // 2, and i == 0 when n == 1
    return torch.where(first_half, step * idx - 1.0, 1.0 - step * (last - idx))


class ChannelNorm(nn.Module):
    """nn.LayerNorm over the channel dim of a (B, C, H, W) map (official `ChannelNorm`, eps 1e-5)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LayerNorm2d(nn.Module):
    """Channels-first LayerNorm of the output head (eps 1e-6, biased variance, official op order)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MinMaxScaler(nn.Module):
    """Scale each RGB channel to [-0.5, 0.5].

    per_batch=False (our default): extrema per image, so outputs do not depend on batch-mates.
    per_batch=True: extrema over the whole batch, exactly as the official code.
    """

    def __init__(self, per_batch: bool = False):
        super().__init__()
        self.per_batch = per_batch

    def extrema(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (min, max), shaped to broadcast against x (B, 3, H, W)."""
        if self.per_batch:
            flat = x.transpose(0, 1).reshape(x.shape[1], -1)
            return flat.min(-1).values.view(1, -1, 1, 1), flat.max(-1).values.view(1, -1, 1, 1)
        return x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)

    @staticmethod
    def apply(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return (x - lo) / (hi - lo).clamp_min(1e-4) - 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x, *self.extrema(x))


class ImplicitFeaturizer(nn.Module):
    """Fourier features of pixel coordinates (and optionally colour) with learned phases.

    Inputs per pixel: [y, x] (+ [r, g, b] with color), each times n_freqs frequencies
    exp(linspace(-2, 10, n_freqs)). The phase tensor is stored as (2, dm, n_freqs) but read as
    (n_freqs, dm) in memory order (a reshape, not a transpose) - that is how the official
    weights are laid out. Output channels: sin (n_freqs*dm) | cos (n_freqs*dm) | colour.
    """

    def __init__(self, color: bool, n_freqs: int):
        super().__init__()
        self.color = color
        self.n_freqs = n_freqs
        self.dim_multiplier = 5 if color else 2
        self.biases = nn.Parameter(torch.randn(2, self.dim_multiplier, n_freqs))

    @property
    def out_channels(self) -> int:
        return 2 * self.dim_multiplier * self.n_freqs + (3 if self.color else 0)

    def forward(self, x: torch.Tensor, ys: torch.Tensor | None = None, xs: torch.Tensor | None = None,
                channels_last: bool = False) -> torch.Tensor:
        """x (B, 3 or any, H, W) -> (B, out_channels, H, W).

        ys (H,), xs (W,): the rows'/columns' coordinates; default linspace(-1, 1) over x's size.
        Tiled inference passes slices of the full image's grid so tiles match exactly.
        channels_last: in inference, computed in (B, H, W, C) memory (`_channels_last_pass`: no
        transposing copy of the widest full-resolution map afterwards); same values.
        """
        b, _, h, w = x.shape
        ys = coord_grid(h, x.device) if ys is None else ys
        xs = coord_grid(w, x.device) if xs is None else xs
        freqs = torch.exp(torch.linspace(-2, 10, self.n_freqs, device=x.device)).to(x.dtype)
        inference = not torch.is_grad_enabled() and not torch.compiler.is_compiling() and not torch.compiler.is_exporting()
        if inference and channels_last:
            return self._channels_last_pass(x, ys, xs, freqs)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).unsqueeze(0)  # (1, 2, H, W)
        feats = grid.to(x.dtype).expand(b, 2, h, w)
        if self.color:
            feats = torch.cat([feats, x], dim=1)
        feats = feats.unsqueeze(1) * freqs.view(1, -1, 1, 1, 1)  # (B, nf, dm, H, W)
        phase = self.biases.view(2, 1, self.n_freqs, self.dim_multiplier, 1, 1).to(x.dtype)
        if inference:
            return self._one_pass(x, feats, phase)
        sin = torch.sin(feats + phase[0]).reshape(b, -1, h, w)
        cos = torch.cos(feats + phase[1]).reshape(b, -1, h, w)
        return torch.cat([sin, cos, x] if self.color else [sin, cos], dim=1)

    def _channels_last_pass(self, x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        """`_one_pass` in (B, H, W, C) memory: the same products, phases, sines and cosines per
        channel, returned as a channels-last (B, C, H, W) view."""
        b, _, h, w = x.shape
        nf, dm = self.n_freqs, self.dim_multiplier
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        base = torch.stack([yy, xx], dim=-1).to(x.dtype).unsqueeze(0).expand(b, h, w, 2)  # (B, H, W, 2)
        if self.color:
            base = torch.cat([base, x.permute(0, 2, 3, 1)], dim=-1)  # (B, H, W, dm)
        feats = base.unsqueeze(3) * freqs.view(-1, 1)  # (B, H, W, nf, dm)
        phase = self.biases.view(2, nf, dm).to(x.dtype)  # the official (nf, dm) reading, as in forward
        out = x.new_empty(b, h, w, self.out_channels)
        k = nf * dm
        torch.add(feats, phase[0], out=out[..., :k].view(b, h, w, nf, dm)).sin_()
        torch.add(feats, phase[1], out=out[..., k : 2 * k].view(b, h, w, nf, dm)).cos_()
        if self.color:
            out[..., 2 * k :] = x.permute(0, 2, 3, 1)
        return out.permute(0, 3, 1, 2)

    def _one_pass(self, x: torch.Tensor, feats: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """Inference: the same adds, sines and cosines written straight into one output tensor
        (no sin/cos temporaries, no concatenation copy): bit-identical, ~2 feature widths less
        memory per pixel."""
        b, nf, dm, h, w = feats.shape
        out = feats.new_empty(b, self.out_channels, h, w)
        k = nf * dm
        sin, cos = out[:, :k].view(b, nf, dm, h, w), out[:, k : 2 * k].view(b, nf, dm, h, w)
        torch.add(feats, phase[0], out=sin).sin_()
        torch.add(feats, phase[1], out=cos).cos_()
        if self.color:
            out[:, 2 * k :] = x
        return out


class Rope2d(nn.Module):
    """Ablation: axial 2-D rotary embedding of per-head queries and keys from [-1, 1] coordinates.

    The first d//4 channel pairs rotate with y, the next d//4 with x; leftover channels (odd head
    dims) pass through. Frequencies span pi .. pi * lr_pe_size geometrically (our choice: the
    paper gives no formula and no RoPE weights were released).
    """

    def __init__(self, head_dim: int, max_freq: float):
        super().__init__()
        n = max(head_dim // 4, 1)
        self.n = n if head_dim >= 4 else 0
        freqs = math.pi * torch.logspace(0, math.log10(max(max_freq, 1.0)), max(n, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """t (B, heads, N, d), pos (N, 2) [y, x] -> rotated t."""
        n = self.n
        if n == 0:
            return t
        ang = pos.to(torch.float32)[:, :, None] * self.freqs  # (N, 2, n)
        cos, sin = ang.cos().to(t.dtype), ang.sin().to(t.dtype)
        rot = t[..., : 4 * n].unflatten(-1, (2, n, 2))  # (B, heads, N, axis, n, pair)
        a, b = rot[..., 0], rot[..., 1]
        out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-3)
        return torch.cat([out, t[..., 4 * n :]], dim=-1)


class MultiheadCrossAttention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameter names (official checkpoints load).

    The attention itself goes through an AttentionDispatcher, so the N x M matrix is never
    materialised unless the reference backend is chosen.

    Head padding: when the dispatcher asks for it (on CUDA, `AttentionDispatcher.head_pad`), each
    head's q/k/v projection gets zero rows (and zero bias) up to a multiple of 8 channels, e.g.
    101 -> 104, so q/k/v rows are 16-byte aligned and PyTorch's flash / memory-efficient /
    cuDNN kernels take them. The padded channels are exactly 0 in q, k and v, so q.k and the
    attention weights are unchanged, the output's padded channels are 0, and the output
    projection gets matching zero columns. The scale stays 1/sqrt(true head dim). Parameters
    keep the official shapes: the padding is built from them on each call (a few hundred KB),
    so it never appears in the state dict and gradients flow to the official parameters.
    """

    def __init__(self, dim: int, heads: int, dispatcher: AttentionDispatcher):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        self.dispatcher = dispatcher
        self.fused_linear = False  # q / output projections as oneDNN linears, residual add fused (kernels.linear)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def _in_proj(self, first: int, parts: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of `parts` consecutive projections (q=0, k=1, v=2) from `first`, with
        `pad` zero rows after each head: ((parts * heads * (d + pad)), D), (parts * heads * (d + pad),)."""
        D, d = self.dim, self.head_dim
        w = self.in_proj_weight[first * D : (first + parts) * D]
        b = self.in_proj_bias[first * D : (first + parts) * D]
        if pad:
            w = F.pad(w.reshape(parts * self.heads, d, D), (0, 0, 0, pad)).reshape(-1, D)
            b = F.pad(b.reshape(parts * self.heads, d), (0, pad)).reshape(-1)
        return w, b

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """context (B, M, D) -> k, v (B, heads, M, d + pad)."""
        head_pad = getattr(self.dispatcher, "head_pad", None)  # export's plain attention callables never pad
        pad = head_pad(context.device, self.head_dim) if head_pad is not None else 0
        kv = F.linear(context, *self._in_proj(1, 2, pad))
        k, v = kv.unflatten(-1, (2, self.heads, self.head_dim + pad)).permute(2, 0, 3, 1, 4)
        return k, v

    def attention_weights(self, x: torch.Tensor, k: torch.Tensor, rope=None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) of queries x (B, n, D) against k from project_kv: (B, heads, n, M),
        float32, with the same rope as `forward`. Materialised, so for a few chosen queries only
        (`loftup viz attention`)."""
        d = self.head_dim
        pad = k.shape[-1] - d
        q = F.linear(x, *self._in_proj(0, 1, pad)).unflatten(-1, (self.heads, d + pad)).transpose(1, 2)
        if rope is not None:
            rot, q_pos, k_pos = rope
            q, k = rot(q, q_pos), rot(k, k_pos)
        return torch.softmax((q.float() @ k.float().transpose(-1, -2)) / math.sqrt(d), dim=-1)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope=None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D) queries; k, v from project_kv; rope: (Rope2d, q_pos, k_pos) or None;
        residual (B, N, D): added to the output (in the projection's epilogue when fused)."""
        d = self.head_dim
        pad = k.shape[-1] - d  # what project_kv padded to, on this device
        with stage("q projection"):
            q = linear(x, *self._in_proj(0, 1, pad), fused=self.fused_linear)
            q = q.unflatten(-1, (self.heads, d + pad)).transpose(1, 2)  # (B, heads, N, d + pad)
            if rope is not None:
                rot, q_pos, k_pos = rope
                q, k = rot(q, q_pos), rot(k, k_pos)
        with stage("attention"):
            out = self.dispatcher(q, k, v, 1.0 / math.sqrt(d))  # (B, heads, N, d + pad)
        with stage("out projection"):
            w_out = self.out_proj.weight
            if pad:  # zero columns under the padded channels: they never reach the output
                w_out = F.pad(w_out.reshape(self.dim, self.heads, d), (0, pad)).reshape(self.dim, -1)
            return linear(out.transpose(1, 2).flatten(2), w_out, self.out_proj.bias, residual=residual,
                          fused=self.fused_linear)


class CrossAttentionBlock(nn.Module):
    """LN_q(queries), LN_kv(tokens), multi-head attention (official `CrossAttention`)."""

    def __init__(self, dim: int, heads: int, dispatcher: AttentionDispatcher):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attention = MultiheadCrossAttention(dim, heads, dispatcher)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.attention.project_kv(self.norm_kv(context))

    def forward(self, x, k, v, rope=None, residual=None) -> torch.Tensor:
        with stage("q projection"):
            x = self.norm_q(x)
        return self.attention(x, k, v, rope, residual)


class FeedForward(nn.Module):
    """LayerNorm -> Linear(D, C) -> GELU -> Linear(C, D) (official indices: net.0, net.1, net.4)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0)
        )
        self.fused_linear = False  # GELU and the residual add in the linears' epilogues (kernels.linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def ffn_residual(ff: FeedForward, x: torch.Tensor) -> torch.Tensor:
    """x + FFN(x): one function so `torch.compile` can fuse the LayerNorm, the GELU and the residual
    add around the two matmuls (loftup.model.deploy.compile_stages); with `ff.fused_linear` the
    GELU and the add ride in the two linears' epilogues instead (`loftup.kernels.linear`)."""
    if not ff.fused_linear:
        return ff(x) + x
    norm, fc1, fc2 = ff.net[0], ff.net[1], ff.net[4]  # Dropout(0) is the identity in eval mode
    h = linear(norm(x), fc1.weight, fc1.bias, activation="gelu", fused=True)
    return linear(h, fc2.weight, fc2.bias, residual=x, fused=True)


class CATransformer(nn.Module):
    """Queries attend to fixed key/value tokens, `depth` times; no self-attention; final LN."""

    def __init__(self, dim: int, hidden: int, depth: int, heads: int, dispatcher: AttentionDispatcher, rope: Rope2d | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(dim)  # registered first: official state-dict order
        self.layers = nn.ModuleList(
            nn.ModuleList([CrossAttentionBlock(dim, heads, dispatcher), FeedForward(dim, hidden)]) for _ in range(depth)
        )
        self.rope = rope
        self.compiled: dict = {}  # "ffn" -> compiled ffn_residual (loftup.model.deploy.compile_stages)

    @torch.no_grad()
    def init_positional(self, amplitude: float) -> None:
        """Start every block's attention local (ours, for short training runs): with RoPE, the same
        bias vector c (amplitude in the first channel of every rotated pair) on the q and k
        projections makes q.k contain |c|^2-weighted cosines of the query-key offset, a bump at
        zero offset, so each output pixel starts attending to the low-res tokens around it
        instead of to arbitrary ones. Content terms from the weights add to it and training
        adjusts both. Needs lr_pe "rope"."""
        if self.rope is None or self.rope.n == 0:
            raise ConfigError("positional attention init needs the rope low-res PE (lr_pe: rope)")
        for block, _ in self.layers:
            att = block.attention
            D = att.in_proj_weight.shape[1]
            c = torch.zeros(att.heads, D // att.heads)
            c[:, 0 : 4 * self.rope.n : 2] = float(amplitude)
            att.in_proj_bias[:D] = c.flatten()
            att.in_proj_bias[D : 2 * D] = c.flatten()

    def project_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-block (k, v) for context tokens (B, M, D): computed once, reused by every query tile."""
        return [attn.project_kv(context) for attn, _ in self.layers]

    def forward(self, x: torch.Tensor, kv: list, q_pos=None, k_pos=None) -> torch.Tensor:
        """x (B, N, D) queries, kv from project_kv -> (B, N, D)."""
        rope = (self.rope, q_pos, k_pos) if self.rope is not None else None
        ffn = self.compiled.get("ffn", ffn_residual)
        for (attn, ff), (k, v) in zip(self.layers, kv):
            x = attn(x, k, v, rope, residual=x)
            with stage("ffn"):
                x = ffn(ff, x)
        with stage("final norm"):
            return self.norm(x)
