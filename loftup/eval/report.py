"""Results as JSON, as a readable table, and as pictures (predictions side by side).

Tables show fractions as percentages (mIoU 61.11, like the paper) and errors in their own
units; the JSON keeps the raw values (fractions). NaN becomes null in JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# (metric key, column header, multiplier, format) per probe
COLUMNS: dict[str, list[tuple[str, str, float, str]]] = {
    "seg": [("miou", "mIoU %", 100, ".2f"), ("pixel_acc", "pixel acc %", 100, ".2f")],
    "depth": [("rmse", "RMSE", 1, ".4f"), ("d1", "d1 %", 100, ".2f"), ("d3", "d3 %", 100, ".2f")],
    "normals": [("rmse", "RMSE deg", 1, ".2f"), ("recall_11.25", "@11.25 %", 100, ".2f"), ("recall_30", "@30 %", 100, ".2f")],
    "video": [("J", "J %", 100, ".2f"), ("F", "F %", 100, ".2f"), ("JF", "J&F %", 100, ".2f")],
    "matting": [("mse", "MSE", 1, ".5f"), ("mae", "MAE", 1, ".4f")],
}


def to_jsonable(obj: Any) -> Any:
    """numpy / torch scalars and arrays, Paths, dataclasses -> plain JSON types; NaN / inf -> None."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (int, str, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    from ..io import atomic_write

    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2)
    atomic_write(path, lambda tmp: tmp.write_text(text + "\n"))
    return path


def write_text(path: str | Path, text: str) -> Path:
    from ..io import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path


def _cell(value: Any, scale: float, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(float(value) * scale, fmt)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with padded columns (readable as plain text too)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def metrics_table(probe: str, metrics: dict[str, dict[str, Any]], delta: dict[str, float] | None = None) -> str:
    """One row per source (and a 'delta' row: engine - reference) with the probe's columns."""
    cols = COLUMNS.get(probe) or [(k, k, 1, ".4g") for k in next(iter(metrics.values()))]
    rows = [[name] + [_cell(m.get(k), s, f) for k, _, s, f in cols] for name, m in metrics.items()]
    if delta is not None:
        rows.append(["delta"] + [("-" if delta.get(k) is None else format(delta[k] * s, "+" + f)) for k, _, s, f in cols])
    return markdown_table(["upsampler"] + [h for _, h, _, _ in cols], rows)


# ----------------------------------------------------------------------------------------
# pictures


def _palette(n: int) -> np.ndarray:
    """n distinct colours (uint8), 0 = black; 255 (ignore) is drawn white by `colorize`."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    colours = [(0, 0, 0)] + [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(max(n - 1, 0))]
    return np.array(colours, dtype=np.uint8)


def colorize(label: np.ndarray, n: int | None = None) -> np.ndarray:
    label = np.asarray(label).astype(np.int64)
    ignore = label == 255
    n = int(max(label[~ignore].max(initial=0) + 1, n or 0))
    out = _palette(n)[np.clip(label, 0, n - 1)]
    out[ignore] = 255
    return out


def _render(probe: str, key: str, value: np.ndarray, n_classes: int | None, vrange=None) -> tuple[np.ndarray, dict]:
    """An (H, W, 3) or (H, W) picture of a target / prediction and imshow kwargs."""
    v = np.asarray(value)
    if probe in ("seg", "video"):
        if v.ndim == 3:  # logits (K, H, W)
            v = v.argmax(0)
        return colorize(v, n_classes), {}
    if probe == "normals":
        if v.shape[0] == 3 and v.ndim == 3:
            v = v.transpose(1, 2, 0)
        return np.clip((v + 1) / 2, 0, 1), {}
    if probe == "depth":
        return v, {"cmap": "viridis", "vmin": vrange[0], "vmax": vrange[1]} if vrange else {"cmap": "viridis"}
    return np.clip(v, 0, 1), {"cmap": "gray", "vmin": 0, "vmax": 1}


def plot_samples(probe: str, samples: list[dict[str, Any]], path: str | Path, n_classes: int | None = None) -> Path | None:
    """One row per sample: image | ground truth | each source's prediction. Written as PNG."""
    if not samples:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    from ..io import atomic_write

    sources = list(samples[0]["pred"])
    target_key = next(iter(samples[0]["target"]))
    cols = 2 + len(sources)
    fig = Figure(figsize=(2.4 * cols, 2.4 * len(samples)))
    axes = fig.subplots(len(samples), cols, squeeze=False)
    for r, s in enumerate(samples):
        gt = np.asarray(s["target"][target_key])
        vrange = None
        if probe == "depth":
            valid = gt[np.isfinite(gt) & (gt > 0)]
            vrange = tuple(float(v) for v in np.percentile(valid, [2, 98])) if valid.size else None
        panels = [("image", s["image"], {})]
        panels.append(("ground truth", *_render(probe, target_key, gt, n_classes, vrange)))
        panels += [(name, *_render(probe, target_key, s["pred"][name], n_classes, vrange)) for name in sources]
        for c, (title, pic, kw) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(pic, **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        axes[r][0].set_ylabel(str(s.get("name", r))[:24], fontsize=7)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    return path


__all__ = ["COLUMNS", "colorize", "markdown_table", "metrics_table", "plot_samples", "to_jsonable", "write_json", "write_text"]
