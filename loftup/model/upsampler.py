"""The LoftUp model: channel norm on the low-res features + the coordinate cross-attention upsampler.

    lr_feats (B, C, h, w) raw backbone features, image (B, 3, H, W) ImageNet-normalised guidance
        -> hr_feats (B, C, H, W), in a layer-normed feature space.

State-dict keys are those of the official hub wrapper (`upsampler.*`, `channelnorm.*`), so a
released `pytorch_model.bin` loads with strict=True (see loftup.model.checkpoint).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ..kernels import AttentionDispatcher
from ..kernels.linear import linear
from ..runtime.profiling import stage
from .config import LoftUpConfig
from .layers import (
    CATransformer,
    ChannelNorm,
    ImplicitFeaturizer,
    LayerNorm2d,
    MinMaxScaler,
    Rope2d,
    coord_grid,
)

HALO = 2  # two 3x3 convs: an output pixel sees a 5x5 neighbourhood of Fourier features


def image_features(up: "LoftUpUpsampler", image, lo, hi, ys, xs) -> torch.Tensor:
    """Min-max scaling (extrema given), Fourier features and their channel norm of an image window:
    (B, 3, H, W) -> (B, 203, H, W). One function so `torch.compile` can fuse it into one pass
    (loftup.model.deploy.compile_stages); channels-last output when the upsampler runs so."""
    x = up.fourier_feat[1](MinMaxScaler.apply(image, lo, hi), ys, xs, channels_last=up.channels_last)
    if up.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)  # a no-op after the featurizer's own channels-last pass
    return up.first_conv[0](x).to(up.compute_dtype)  # float32 featurizer and norm; the convs' dtype after


# The share of what a memory budget leaves that the tile plan fills; the rest is slack for one
# tile's transients beyond `working_bytes_per_pixel` and the allocator. Fresh processes at a 1 GiB
# budget (448 px, C = 384, fp32, 2-core VM, 2026-12-06/07): 0.85 peaked at 966-1030 MB; 0.75 at
# 832-995 MB here and 1026 MB in one CI run, because freed heap pages stayed resident from tile to
# tile. With 0.7 and those pages handed back whenever the process outgrows the plan (`_tiles`),
# 820-881 MB over nine runs (three with MALLOC_ARENA_MAX=1), and 448 px at the default budget
# as fast as without (interleaved A/B: 1.00x; trimming after every tile instead cost 7%).
PLANNED_FRACTION = 0.7

class LoftUpUpsampler(nn.Module):
    """The upsampler proper (official `LoftUp`): expects channel-normed low-res features."""

    def __init__(self, cfg: LoftUpConfig):
        super().__init__()
        self.cfg = cfg
        C, D, k = cfg.feat_dim, cfg.token_dim, cfg.image_conv_kernel
        self.dispatcher = AttentionDispatcher(cfg.attn_backend, cfg.attn_budget_mb * 2**20)
        # registration order = the official state-dict order
        if cfg.lr_pe == "sine":
            self.lr_pe = ImplicitFeaturizer(False, cfg.lr_n_freqs)
        elif cfg.lr_pe == "learnable":  # ablation; a bare Parameter, as in the official code
            self.lr_pe = nn.Parameter(torch.randn(1, C, cfg.lr_pe_size, cfg.lr_pe_size) * 0.02)
        self.fourier_feat = nn.Sequential(MinMaxScaler(cfg.minmax == "batch"), ImplicitFeaturizer(True, cfg.n_freqs))
        self.first_conv = nn.Sequential(
            ChannelNorm(cfg.image_feat_dim),
            nn.Conv2d(cfg.image_feat_dim, D, k, padding=k // 2),
            nn.BatchNorm2d(D),
            nn.ReLU(),
            nn.Conv2d(D, D, k, padding=k // 2),
            nn.BatchNorm2d(D),
            nn.ReLU(),
        )
        self.final_conv = nn.Sequential(nn.Conv2d(D, C, 1), LayerNorm2d(C))
        rope = Rope2d(cfg.head_dim, cfg.lr_pe_size) if cfg.lr_pe == "rope" else None
        self.ca_transformer = CATransformer(D, C, cfg.num_blocks, cfg.num_heads, self.dispatcher, rope)
        # Run-time variants (loftup.model.deploy): Fourier features written channels-last, and
        # compiled stage functions ("features"; "query_path": a whole tile's query path) that
        # replace the eager ones.
        self.channels_last = False
        self.compiled: dict = {}
        # Queries per block of the token path's scan (`_chunked_tokens_out`); None = the whole
        # tile at once. Set by the ONNX export for the formats whose graph is chunked.
        self.query_chunk: int | None = None
        # Rows per band of the full-resolution stages' scan (`_banded_tokens`: Fourier features,
        # channel norm, convs); None = the whole image at once. Set with query_chunk by the ONNX export.
        self.row_band: int | None = None
        # Queries per block of the eager token path (`_token_blocks`; set by
        # loftup.model.deploy.cpu_variant); None = the whole tile at once. Not while compiling.
        self.token_chunk: int | None = None
        # The 1x1 head as a oneDNN linear (kernels.linear; set by loftup.model.deploy.cpu_variant).
        self.fused_linear = False
        # Peak process RSS (bytes) that tiling keeps under ("auto" tiling); None: the default
        # budget (loftup.runtime.budget). Set by engines from --memory-budget.
        self.memory_budget: int | None = None

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the convs, the token path and the head: float32, or bfloat16 / float16 in a
        native reduced-precision variant (`loftup.model.deploy.native_precision`). The Fourier
        featurizers and the channel norms stay float32 in every variant."""
        return self.final_conv[0].weight.dtype

    @torch.no_grad()
    def init_low_frequency(self, keep: int) -> None:
        """Start the query path blind to its fastest Fourier features (ours, for short training runs):
        zero the first conv's weights on the sin and cos channels of every frequency after the first
        `keep`. The frequencies run from exp(-2) = 0.14 to exp(10) = 22026 and a pixel at 224 px is
        0.009 of the coordinate range, so the fastest turn a coordinate's phase by up to 200 rad per
        pixel and a colour's by up to 2200 rad per 0.1 of colour: from a random init they reach the
        output as per-pixel noise. The inputs stay, so training can grow those weights where they help."""
        feat = self.fourier_feat[1]
        if not 0 < keep <= feat.n_freqs:
            raise ConfigError(f"keep must be 1..{feat.n_freqs} query frequencies, got {keep}")
        k, dm = feat.n_freqs * feat.dim_multiplier, feat.dim_multiplier
        weight = self.first_conv[1].weight
        for start in (0, k):  # the sin block, then the cos block; channel f * dm + d within each
            weight[:, start + keep * dm : start + k] = 0

    @property
    def halo(self) -> int:
        return HALO if self.cfg.image_conv_kernel == 3 else 0

    # -- key/value path ------------------------------------------------------------------
    def kv_tokens(self, lr: torch.Tensor) -> torch.Tensor:
        """Channel-normed lr (B, C, h, w) -> key/value tokens (B, h*w, D), row-major."""
        if self.cfg.lr_pe == "sine":
            lr = torch.cat([lr, self.lr_pe(lr)], dim=1)
        elif self.cfg.lr_pe == "learnable":
            lr = lr + F.interpolate(self.lr_pe, size=lr.shape[-2:], mode="bicubic", align_corners=False).to(lr.dtype)
        return lr.flatten(2).transpose(1, 2).to(self.compute_dtype)

    # -- query path ----------------------------------------------------------------------
    def _queries_and_out(self, image, lo, hi, ys, xs, kv, k_pos, crop, whole: bool = False) -> torch.Tensor:
        """Fourier feats of a window of the image (scaled by lo/hi) -> convs -> crop halo -> attention -> head.
        whole: the window is the whole image (no crop), which the banded graph needs."""
        top, left, h, w = crop
        q_pos = None
        if k_pos is not None:
            yy, xx = torch.meshgrid(ys[top : top + h], xs[left : left + w], indexing="ij")
            q_pos = torch.stack([yy.flatten(), xx.flatten()], dim=1)
        if self.query_chunk and self.row_band and whole:
            tokens = self._banded_tokens(image, lo, hi, ys, xs)  # (bands * rows * w, B, D), the first h*w real
            return self._chunked_tokens_out(tokens, h * w, kv, q_pos, k_pos).unflatten(2, (h, w))
        x = self._conv_features(image, lo, hi, ys, xs)
        x = x[:, :, top : top + h, left : left + w]
        tokens = x.flatten(2).transpose(1, 2)  # (B, h*w, D), no copy when channels-last
        if self.query_chunk:
            return self._chunked_tokens_out(tokens.transpose(0, 1), h * w, kv, q_pos, k_pos).unflatten(2, (h, w))
        if self.token_chunk and not torch.compiler.is_compiling():
            return self._token_blocks(tokens, kv, q_pos, k_pos).transpose(1, 2).unflatten(2, (h, w))
        q = self.ca_transformer(tokens, kv, q_pos, k_pos)
        with stage("output head"):
            return self.output_head(q).transpose(1, 2).unflatten(2, (h, w))  # (B, C, h, w), channels-last strides

    def _token_blocks(self, tokens, kv, q_pos, k_pos) -> torch.Tensor:
        """The token path and the head over blocks of `token_chunk` queries, eagerly: tokens (B, N, D)
        -> (B, N, C) float32. Queries never interact, so this equals the whole-tile path; a block's
        activations (a few MB) stay in cache and its allocations small. A bf16 head's output is
        widened to float32 (what engines return) block by block, in cache: the same numbers as
        widening the whole output afterwards, without that pass and its 2-byte copy."""
        B, N, _ = tokens.shape
        S = int(self.token_chunk)
        out = tokens.new_empty(B, N, self.cfg.feat_dim, dtype=torch.float32)
        for i in range(0, N, S):
            pos = q_pos[i : i + S] if q_pos is not None else None
            q = self.ca_transformer(tokens[:, i : i + S].contiguous(), kv, pos, k_pos)
            with stage("output head"):
                out[:, i : i + S] = self.output_head(q)
        return out

    def _conv_features(self, image, lo, hi, ys, xs) -> torch.Tensor:
        """Fourier features of an image window (with their channel norm) -> the two convs (BatchNorm,
        ReLU), zero padded as the official convs: (B, 3, H, W) -> (B, D, H, W)."""
        with stage("fourier features"):
            x = self.compiled.get("features", image_features)(self, image, lo, hi, ys, xs)
        with stage("convs"):
            for layer in list(self.first_conv)[1:]:  # [0], the channel norm, is in image_features
                x = layer(x)
        return x

    def _banded_tokens(self, image, lo, hi, ys, xs) -> torch.Tensor:
        """Fourier features, channel norm and convs over full-width bands of `row_band` rows:
        (B, 3, H, W) -> tokens (bands * row_band * W, B, D), token-major, pixel p = y * W + x at
        row p for every y < H (bands are whole rows), rows past the image at the end.

        Each band reads its rows plus the convs' halo (2 rows above and below for two 3x3 convs)
        and runs the convs without row padding; rows outside the image are zeroed before each
        conv, which is exactly the official zero padding, so the tokens equal the whole-image
        ones. Exported (torch.export), the bands are one `scan` (an ONNX Scan node: H stays
        symbolic, only one band's Fourier features and conv maps are alive at a time); eagerly,
        a Python loop. The last band's rows past the image come from clamped rows; the caller
        reads only the first H * W tokens.
        """
        R, halo, H = int(self.row_band), self.halo, image.shape[2]
        pad = self.cfg.image_conv_kernel // 2

        def band(rows):  # (R + 2 * halo,) image rows from band start - halo -> (R * W, B, D)
            inside = (rows >= 0) & (rows < H)
            clamped = rows.clamp(0, H - 1)
            with stage("fourier features"):
                x = self.compiled.get("features", image_features)(
                    self, image.index_select(2, clamped), lo, hi, ys.index_select(0, clamped), xs)
            with stage("convs"):
                cut = 0
                for layer in list(self.first_conv)[1:]:
                    if not isinstance(layer, nn.Conv2d):
                        x = layer(x)
                        continue
                    keep = inside[cut : inside.shape[0] - cut].to(x.dtype)  # this conv's input rows
                    x = F.conv2d(x * keep[:, None], layer.weight, layer.bias, padding=(0, pad))
                    if getattr(layer, "relu", False):  # a Winograd conv carrying its ReLU (kernels.winograd)
                        x = F.relu(x)
                    cut += pad
            return x.flatten(2).permute(2, 0, 1)  # (B, D, R, W) -> (R * W, B, D)

        starts = torch.arange((H + R - 1) // R, device=image.device) * R - halo
        index = starts[:, None] + torch.arange(R + 2 * halo, device=image.device)  # (bands, R + 2 * halo)
        if not torch.compiler.is_exporting():
            return torch.cat([band(rows) for rows in index], dim=0)
        from torch._higher_order_ops.scan import scan

        def body(carry, rows):
            return carry + 0, band(rows)

        _, out = scan(body, image.new_zeros(()), index)  # (bands, R * W, B, D)
        return out.flatten(0, 1)

    def output_head(self, q: torch.Tensor) -> torch.Tensor:
        """`final_conv` (1x1 conv + channel LayerNorm, eps 1e-6) on tokens: (B, n, D) -> (B, n, C).

        The same parameters and function as the official conv-then-LayerNorm2d on a map, as one
        matrix multiply and one fused layer norm: 3x faster on CPU than the map form (whose norm
        is eight elementwise passes), within 3e-6 of it at C = 384.
        """
        conv, norm = self.final_conv[0], self.final_conv[1]
        y = linear(q, conv.weight.flatten(1), conv.bias, fused=self.fused_linear)
        return F.layer_norm(y, y.shape[-1:], norm.weight.to(y.dtype), norm.bias.to(y.dtype), norm.eps)

    def _chunked_tokens_out(self, tokens, N, kv, q_pos, k_pos) -> torch.Tensor:
        """The token path (transformer + per-pixel head) over blocks of `query_chunk` queries:
        tokens (>= N, B, D), token-major, the first N real -> (B, C, N). Exported (torch.export),
        the blocks are one `scan`, which the ONNX exporter writes as one loop node, so N stays
        symbolic; eagerly, a Python loop.

        Queries never interact, so this equals the whole-tensor path; only one block's scores,
        FFN activations and head temporaries are alive at a time. The last block is filled up by
        repeating query N-1; its extra outputs are dropped.
        """
        S = int(self.query_chunk)

        def block(idx):  # (S,) query indices -> (B, C, S)
            pos = q_pos.index_select(0, idx) if q_pos is not None else None
            q = self.ca_transformer(tokens.index_select(0, idx).transpose(0, 1), kv, pos, k_pos)  # (B, S, D)
            return self.output_head(q).transpose(1, 2)  # (B, C, S)

        if not torch.compiler.is_exporting():
            return torch.cat([block(torch.arange(i, min(i + S, N), device=tokens.device)) for i in range(0, N, S)], dim=2)
        from torch._higher_order_ops.scan import scan

        kv = [(k.clone(), v.clone()) for k, v in kv]  # scan bodies may not take aliasing inputs (k, v: views of one tensor)
        starts = torch.arange((N + S - 1) // S, device=tokens.device) * S
        index = (starts[:, None] + torch.arange(S, device=tokens.device)).clamp_max(N - 1)  # (blocks, S)

        def body(carry, idx):
            return carry + 0, block(idx)

        _, ys = scan(body, tokens.new_zeros(()), index)  # (blocks, B, C, S)
        return ys.permute(1, 2, 0, 3).flatten(2)[:, :, :N]

    def working_bytes_per_pixel(self, batch: int = 1) -> int:
        """Working memory per output pixel of the eager query path (Fourier features, convs, tokens,
        FFN, head): ~6 token-width tensors in the compute dtype alive at the token stages' peak
        plus ~3 float32 Fourier-feature widths for the featurizer's transients. Measured on CPU
        (RSS slope between 112 and 224 px, untiled): 8.7 KB per pixel at C = 384, 2.2 KB at C = 32;
        this counts 12.1 KB and 3.7 KB (tiles then also hold their halo and slices). The CPU
        inference variants (issue 26, fresh process at 224 px, output included): fp32 11.9 KB,
        native bf16 5.7 KB per pixel; this counts 12.1 and 7.3 KB plus the output."""
        e = torch.empty((), dtype=self.compute_dtype).element_size()
        return batch * (6 * self.cfg.token_dim * e + 3 * self.cfg.image_feat_dim * 4)

    def tile_plan(self, B: int, H: int, W: int, n_keys: int = 0) -> tuple[int, int] | None:
        """(tile rows, tile cols) for a B x H x W output, or None for one untiled pass.

        tiling "always": cfg.tile_size squares; "never" (or training): None; "auto": from
        `memory_budget` (bytes of process peak RSS; None: `loftup.runtime.budget.default_memory_budget`):
        70% (PLANNED_FRACTION) of what the budget leaves after the resident memory now, the output
        and a reserve for the key/value tokens, minus the attention's score blocks (a quarter of it, at least 64 MB
        and at most the dispatcher's own budget, lent to the dispatcher for the call), over
        `working_bytes_per_pixel`. Tiles are full-width bands when a band of at least 32 rows
        fits (the halo then costs only above and below), squares otherwise. ConfigError when not
        even a 16 x 16 tile fits.
        """
        return self._plan(B, H, W, n_keys)[0]

    def _plan(self, B: int, H: int, W: int, n_keys: int) -> tuple[tuple[int, int] | None, int | None, int | None]:
        """(tile plan, bytes for the attention's score blocks or None to keep the dispatcher's,
        resident bytes above which freed heap pages go back to the OS after a tile or None)."""
        if self.cfg.tiling == "never" or self.training:
            return None, None, None
        if self.cfg.tiling == "always":
            return (self.cfg.tile_size, self.cfg.tile_size), None, None
        from ..runtime.budget import current_rss, default_memory_budget, format_bytes

        budget = self.memory_budget or default_memory_budget()
        reduced = torch.is_autocast_enabled("cpu") or self.compute_dtype != torch.float32
        # a reduced-precision output + the engine's float32 copy of it; blocks of the token path
        # write float32 straight away (_token_blocks)
        out_bytes = B * self.cfg.feat_dim * H * W * (6 if reduced and not self.token_chunk else 4)
        reserve = 96 * 2**20 + 2 * B * self.cfg.num_blocks * n_keys * self.cfg.token_dim * 4
        held = current_rss()
        working = int(PLANNED_FRACTION * (budget - held - out_bytes - reserve))
        # a tile may start once the process holds no more than the plan counted on: what it held, the
        # whole output and the reserve; above that, the heap's freed pages go back first (_tiles)
        trim_above = held + out_bytes + reserve
        attn = None
        if hasattr(self.dispatcher, "budget_bytes"):  # score blocks: a quarter, at least 64 MB, at most the dispatcher's own
            # (16 MB blocks - 341 queries against 1024 keys - made 448 px 1.6x slower than untiled; 64 MB: 1365)
            attn = max(1, min(self.dispatcher.budget_bytes, max(64 * 2**20, working // 4), working // 2))
            working -= attn
        per_px = self.working_bytes_per_pixel(B)
        if getattr(self.dispatcher, "requested", None) == "reference":  # scores and probabilities, whole, float32
            per_px += 3 * B * self.cfg.num_heads * n_keys * 4
        if working >= per_px * H * W:
            return None, attn, None
        pixels = working // per_px
        if pixels < 16 * 16:
            raise ConfigError(
                f"a memory budget of {format_bytes(budget)} is too small for a {H}x{W} output (batch {B}): the process "
                f"already holds {format_bytes(current_rss())} and the output needs {format_bytes(out_bytes)}; "
                "raise --memory-budget or use a smaller size or batch"
            )
        if pixels >= 32 * W:
            return (int(pixels // W), W), attn, trim_above
        side = int(pixels**0.5)
        return (side, side), attn, trim_above

    def use_tiling(self, H: int, W: int, B: int = 1) -> bool:
        return self.tile_plan(B, H, W) is not None

    def forward(self, lr: torch.Tensor, image: torch.Tensor, tile: bool | None = None,
                window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """lr (B, C, h, w) channel-normed features, image (B, 3, H, W) -> (B, C, H, W).

        tile: None = decide from the config; True/False forces (tiling is exact, eval mode only).
        window: (top, left, height, width) -> only that window of the output, (B, C, height,
        width), computed from the window plus its halo - exact, like a tile (in eval mode; in
        train mode BatchNorm takes its statistics over the window). Training on random windows
        (`loftup.train.stage1`, `window`) costs a fraction of the whole output.
        """
        B, _, H, W = image.shape
        with stage("min-max"):
            lo, hi = self.fourier_feat[0].extrema(image)  # over the whole image (or batch), before any tiling
        with stage("kv projection"):
            kv = self.ca_transformer.project_kv(self.kv_tokens(lr))
        k_pos = None
        if self.cfg.lr_pe == "rope":
            hy, wx = torch.meshgrid(coord_grid(lr.shape[2], lr.device), coord_grid(lr.shape[3], lr.device), indexing="ij")
            k_pos = torch.stack([hy.flatten(), wx.flatten()], dim=1)
        ys, xs = coord_grid(H, image.device), coord_grid(W, image.device)
        if window is not None:
            top, left, h, w = (int(v) for v in window)
            if not (0 <= top and 0 <= left and h > 0 and w > 0 and top + h <= H and left + w <= W):
                raise ConfigError(f"window {tuple(window)} does not lie inside the {H}x{W} output")
            return self._window(image, lo, hi, ys, xs, kv, k_pos, top, left, top + h, left + w)
        if tile and self.training:
            raise ConfigError("tiled inference needs eval mode (BatchNorm uses batch statistics in train mode)")
        plan, attn, trim_above = None, None, None
        if tile is None and not torch.compiler.is_compiling() and not torch.compiler.is_exporting():
            plan, attn, trim_above = self._plan(B, H, W, lr.shape[2] * lr.shape[3])
        elif tile:
            plan = (self.cfg.tile_size, self.cfg.tile_size)
        if attn is None:
            return self._tiles(image, lo, hi, ys, xs, kv, k_pos, plan, trim_above)
        kept = self.dispatcher.budget_bytes
        self.dispatcher.budget_bytes = attn  # this call's share of the budget for score blocks
        try:
            return self._tiles(image, lo, hi, ys, xs, kv, k_pos, plan, trim_above)
        finally:
            self.dispatcher.budget_bytes = kept

    def _window(self, image, lo, hi, ys, xs, kv, k_pos, y0, x0, y1, x1) -> torch.Tensor:
        """Output rows y0:y1, columns x0:x1, from that window of the image plus its halo."""
        H, W = image.shape[-2:]
        halo = self.halo
        wy0, wx0 = max(y0 - halo, 0), max(x0 - halo, 0)
        wy1, wx1 = min(y1 + halo, H), min(x1 + halo, W)
        query_path = self.compiled.get("query_path", self._queries_and_out)
        return query_path(image[:, :, wy0:wy1, wx0:wx1], lo, hi, ys[wy0:wy1], xs[wx0:wx1], kv, k_pos,
                          (y0 - wy0, x0 - wx0, y1 - y0, x1 - x0))

    def _tiles(self, image, lo, hi, ys, xs, kv, k_pos, plan, trim_above: int | None = None) -> torch.Tensor:
        """The query path over the tiles of `plan` ((rows, cols) or None: one pass), each with its halo.

        trim_above (CPU, from a budget's plan): when the process holds more than this after a tile,
        the C heap's freed pages go back to the OS (`runtime.budget.release_free_memory`) before
        the next one; pages freed by one tile otherwise stay resident and the RSS creeps up tile
        after tile past the budget. Only when needed: handing pages back makes the next tile fault
        them in again (at 448 px, trimming after every tile cost 7%; this way, nothing measurable).
        """
        B, _, H, W = image.shape
        if plan is None:
            query_path = self.compiled.get("query_path", self._queries_and_out)
            return query_path(image, lo, hi, ys, xs, kv, k_pos, (0, 0, H, W), whole=True)
        from ..runtime import budget

        out = None
        th, tw = plan
        trim = trim_above is not None and image.device.type == "cpu"
        for y0 in range(0, H, th):
            for x0 in range(0, W, tw):
                y1, x1 = min(y0 + th, H), min(x0 + tw, W)
                piece = self._window(image, lo, hi, ys, xs, kv, k_pos, y0, x0, y1, x1)
                if out is None:  # in the pieces' layout: channels-last pieces into an NCHW output were a transposing copy
                    C = piece.shape[1]
                    cl = not piece.is_contiguous() and piece.is_contiguous(memory_format=torch.channels_last)
                    out = piece.new_empty(B, H, W, C).permute(0, 3, 1, 2) if cl else piece.new_empty(B, C, H, W)
                out[:, :, y0:y1, x0:x1] = piece
                del piece
                if trim and budget.current_rss() > trim_above:
                    budget.release_free_memory()
        return out


class LoftUp(nn.Module):
    """Hub-compatible wrapper: `channelnorm` on raw low-res features, then `upsampler`.

    lr_feats (B, C, h, w) raw backbone patch features; image (B, 3, H, W) normalised guidance
    image whose size sets the output size -> (B, C, H, W).
    """

    kind = "loftup"  # loftup.model.kinds
    output_at_guidance_size = True
    min_lr_side = 1

    def __init__(self, cfg: LoftUpConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or LoftUpConfig()
        if overrides:
            cfg = cfg.replace(**overrides)
        self.cfg = cfg
        self.upsampler = LoftUpUpsampler(cfg)
        self.channelnorm = ChannelNorm(cfg.feat_dim)

    def check_inputs(self, lr_feats: torch.Tensor, image: torch.Tensor) -> None:
        C = self.cfg.feat_dim
        if not isinstance(lr_feats, torch.Tensor) or lr_feats.dim() != 4:
            raise InputError(f"lr_feats must be a (B, {C}, h, w) tensor, got shape {tuple(getattr(lr_feats, 'shape', ()))}")
        if lr_feats.shape[1] != C:
            raise InputError(
                f"lr_feats has {lr_feats.shape[1]} channels but this upsampler was built for {C}; "
                "use a checkpoint trained for this backbone"
            )
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            raise InputError(f"image must be a (B, 3, H, W) tensor, got shape {tuple(getattr(image, 'shape', ()))}")
        if image.shape[0] != lr_feats.shape[0]:
            raise InputError(f"batch sizes differ: lr_feats {lr_feats.shape[0]}, image {image.shape[0]}")
        if min(image.shape[2:]) < 1 or min(lr_feats.shape[2:]) < 1:
            raise InputError("lr_feats and image need at least one pixel in each dimension")
        if not (lr_feats.is_floating_point() and image.is_floating_point()):
            raise InputError("lr_feats and image must be floating-point tensors")

    def forward(self, lr_feats: torch.Tensor, image: torch.Tensor, tile: bool | None = None,
                window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
        """window: (top, left, height, width) of the output to compute (see LoftUpUpsampler.forward)."""
        self.check_inputs(lr_feats, image)
        with stage("lr channel norm"):
            lr = self.channelnorm(lr_feats.to(self.channelnorm.norm.weight.dtype))
        image = image.to(self.upsampler.fourier_feat[1].biases.dtype)  # Fourier features: float32 in every variant
        return self.upsampler(lr, image, tile=tile, window=window)

    @torch.no_grad()
    def upsample(self, lr_feats: torch.Tensor, image: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Inference helper: resize the guidance image to `size` (bilinear) and upsample to it."""
        if size is not None and tuple(image.shape[-2:]) != tuple(size):
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        return self(lr_feats, image)

    @property
    def attention_backend(self) -> AttentionDispatcher:
        return self.upsampler.dispatcher

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
