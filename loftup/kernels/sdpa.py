"""Query-chunked scaled_dot_product_attention: exact, and never holds the whole N x M matrix.

Queries never interact in LoftUp's cross-attention, so splitting them into chunks gives the
same result as one call. The chunk length is derived from a memory budget for the score
block (B * heads * chunk * M elements, counted three times for scores, probabilities and
the softmax's temporaries).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_BUDGET_BYTES = 256 * 2**20


def chunk_length(batch: int, heads: int, n_keys: int, element_bytes: int = 4, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> int:
    """Queries per chunk so that one chunk's score block stays within `budget_bytes`."""
    per_query = 3 * batch * heads * n_keys * max(element_bytes, 4)
    return max(1, budget_bytes // per_query)


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> torch.Tensor:
    """softmax(q k^T * scale) v over query chunks. q (B, heads, N, d); k, v (B, heads, M, d)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    B, H, N, _ = q.shape
    step = chunk_length(B, H, k.shape[-2], q.element_size(), budget_bytes)
    if step >= N:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    out = [F.scaled_dot_product_attention(q[:, :, i : i + step], k, v, scale=scale) for i in range(0, N, step)]
    return torch.cat(out, dim=2)
