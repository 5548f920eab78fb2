"""Training data: images with masks from SA-1B (folders or .tar shards), COCO, or superpixels.

Discovery (`discover`) turns a data folder into `ImageRecord`s:
- SA-1B public layout: `sa_*.jpg` + `sa_*.json` (COCO RLE `segmentation` {size, counts} per
  annotation), as files or inside `.tar` shards, which are read in place (one pass over the
  tar headers to index members; samples are read by offset, nothing is unpacked);
- any image folder (searched recursively); an image's masks come from, with `masks="auto"`:
  a SA-1B-style JSON beside it (same stem), else COCO instance annotations (`coco_json`, or
  found as DATA/annotations/instances_*.json), else Felzenszwalb superpixels computed on the fly.
  `masks=` forces one source ("sa1b", "coco", "felzenszwalb", "slic", "none").

Sampling (`MaskedImageDataset`): an image and its masks are cut by the same square box and
resampled to the same grid - the image with PIL's antialiased bicubic, each mask by
nearest-pixel lookup at the same output pixel centres (RLE masks are sampled without being
decoded at full size). Masks empty after cropping are dropped, then at most `max_masks` are
kept (file order; superpixels largest first). For stage 2 each image also yields
`crops_per_image` teacher views: a random footprint of side s = S / t (t in teacher_scale) in
the student's S x S output, rendered from the original image at the teacher size (this is the
image scaled by t and cropped), with masks sampled the same way.

A sample that cannot be read (corrupt image, corrupt JSON, bad RLE, damaged tar member) is
replaced by the next readable one; the item reports what it skipped, so the training loop
counts and warns instead of crashing. All randomness is drawn from a per-sample seed
(seed, epoch, index), so data do not depend on worker count, world size or resumption.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import ConfigError, InputError, LoftupError
from ..io import rgb_image
from ..pipeline import IMAGENET_MEAN, IMAGENET_STD
from .rle import polygons_rasterize, rle_counts, rle_sample

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_SKIP_TRIES = 16


@contextlib.contextmanager
def unwrap_worker_errors() -> Iterator[None]:
    """Our errors raised in a DataLoader worker come back as the same type with the worker's whole
    traceback as the message; re-raise them with the original one-line message."""
    try:
        yield
    except LoftupError as exc:
        text = str(exc)
        if "DataLoader worker process" not in text or "Traceback" not in text:
            raise
        last = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
        prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
        raise type(exc)(last[len(prefix):] if last.startswith(prefix) else last) from None


# -- records ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileRef:
    """Bytes of a file on disk, or of a member inside an uncompressed tar (by offset)."""

    path: str
    offset: int = -1  # -1: a plain file; else the member's data offset in the tar at `path`
    size: int = -1
    member: str = ""

    @property
    def name(self) -> str:
        return f"{self.path}:{self.member}" if self.offset >= 0 else self.path


@dataclass(frozen=True)
class ImageRecord:
    """One training image and where its masks come from.

    mask_kind: "sa1b" (mask_ref = the JSON), "coco" (coco_anns = that image's annotations),
    "felzenszwalb" / "slic" (computed on the fly) or "none".
    """

    key: str
    image: FileRef
    mask_kind: str
    mask_ref: FileRef | None = None
    coco_anns: tuple = ()
    coco_size: tuple[int, int] = (0, 0)  # (h, w) the annotations refer to


@dataclass
class DataIndex:
    records: list[ImageRecord]
    description: str
    warnings: list[str] = field(default_factory=list)


# -- discovery ----------------------------------------------------------------------------------
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f


def index_tar(path: Path) -> tuple[dict[str, FileRef], str | None]:
    """Members of an uncompressed tar as FileRefs by member name (one pass over the headers)."""
    refs: dict[str, FileRef] = {}
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if m.isfile():
                    refs[m.name] = FileRef(str(path), m.offset_data, m.size, m.name)
    except (tarfile.TarError, OSError, EOFError) as e:
        return refs, f"{path.name}: {type(e).__name__}: {e}"
    return refs, None


def _find_coco_jsons(root: Path) -> list[Path]:
    ann = root / "annotations"
    return sorted(ann.glob("instances_*.json")) if ann.is_dir() else []


def _load_coco(path: Path) -> dict[str, tuple[tuple, tuple[int, int]]]:
    """COCO instances file -> {image basename: (annotations, (h, w))}."""
    try:
        data = json.loads(Path(path).read_text())
        images = {int(im["id"]): im for im in data["images"]}
        anns: dict[int, list] = {}
        for a in data.get("annotations", []):
            anns.setdefault(int(a["image_id"]), []).append(a)
    except FileNotFoundError:
        raise InputError(f"COCO annotation file {path} does not exist") from None
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read COCO annotations {path}: {type(e).__name__}: {e}; pass a valid instances_*.json") from None
    out = {}
    for iid, im in images.items():
        segs = tuple(
            {"segmentation": a.get("segmentation"), "iscrowd": int(a.get("iscrowd", 0))} for a in anns.get(iid, [])
        )
        out[Path(str(im["file_name"])).name] = (segs, (int(im.get("height", 0)), int(im.get("width", 0))))
    return out


def discover(data: str | Path, masks: str = "auto", coco_json: str | None = None) -> DataIndex:
    """Index a data folder (or one .tar shard); InputError if it is missing or holds no images."""
    root = Path(data).expanduser()
    if not str(data):
        raise InputError("no data folder given; pass --data DIR (an image folder or SA-1B shards)")
    if not root.exists():
        raise InputError(f"data folder {root} does not exist; pass --data DIR with images or SA-1B .tar shards")
    files = [root] if root.is_file() else list(_walk(root))
    warnings: list[str] = []
    records: list[ImageRecord] = []
    unsup = masks if masks in ("felzenszwalb", "slic", "none") else "felzenszwalb"
    use_json = masks in ("auto", "sa1b")

    # SA-1B shards, read in place
    shards = [f for f in files if f.suffix == ".tar"]
    for shard in shards:
        refs, err = index_tar(shard)
        if err:
            warnings.append(f"skipped unreadable shard {err}")
        jsons = {Path(n).with_suffix("").as_posix(): r for n, r in refs.items() if n.endswith(".json")}
        for name, ref in sorted(refs.items()):
            if _is_image(name):
                js = jsons.get(Path(name).with_suffix("").as_posix()) if use_json else None
                kind = "sa1b" if js else (unsup if masks != "sa1b" else None)
                if kind is None:
                    warnings.append(f"no SA-1B JSON for {shard.name}:{name}; skipped")
                    continue
                records.append(ImageRecord(f"{shard.name}:{name}", ref, kind, js))

    # plain image files
    coco: dict[str, tuple[tuple, tuple[int, int]]] = {}
    if masks in ("auto", "coco"):
        paths = [Path(coco_json)] if coco_json else _find_coco_jsons(root if root.is_dir() else root.parent)
        if masks == "coco" and not paths:
            raise InputError(f"--masks coco needs COCO instance annotations: pass --coco-json FILE (none under {root}/annotations)")
        for p in paths:
            coco.update(_load_coco(p))
    images = [f for f in files if _is_image(f.name)]
    for img in images:
        key = img.relative_to(root).as_posix() if root.is_dir() else img.name
        side = img.with_suffix(".json")
        if use_json and side.is_file():
            records.append(ImageRecord(key, FileRef(str(img)), "sa1b", FileRef(str(side))))
        elif masks in ("auto", "coco") and img.name in coco:
            anns, hw = coco[img.name]
            records.append(ImageRecord(key, FileRef(str(img)), "coco", None, anns, hw))
        elif masks in ("sa1b", "coco"):
            warnings.append(f"no {masks} masks for {key}; skipped")
        else:
            records.append(ImageRecord(key, FileRef(str(img)), unsup))
    if not records:
        what = "images (" + ", ".join(IMAGE_EXTS) + ") or SA-1B .tar shards"
        raise InputError(f"no usable training images in {root}: found no {what}" + (f" with {masks} masks" if masks in ("sa1b", "coco") else ""))
    kinds: dict[str, int] = {}
    for r in records:
        kinds[r.mask_kind] = kinds.get(r.mask_kind, 0) + 1
    desc = f"{len(records)} images from {root}" + (f" ({len(shards)} tar shards)" if shards else "")
    desc += "; masks: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
    return DataIndex(records, desc, warnings)


# -- geometry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    """A square region of the image, box = (x0, y0, x1, y1) in [0, 1] image coordinates,
    resampled to size x size output pixels, then optionally mirrored left-right."""

    box: tuple[float, float, float, float]
    size: int
    flip: bool = False

    def pixel_box(self, w: int, h: int) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 * w, y0 * h, x1 * w, y1 * h)

    def sample_positions(self, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
        """Integer pixel (rows, cols) of a w x h grid under the output pixel centres (no flip)."""
        x0, y0, x1, y1 = self.box
        c = (np.arange(self.size) + 0.5) / self.size
        # + 1e-6 px: a centre exactly on a pixel edge (integer scale factors) rounds the same
        # way however the box was computed (student view or teacher sub-view)
        ys = np.floor((y0 + c * (y1 - y0)) * h + 1e-6).astype(np.int64)
        xs = np.floor((x0 + c * (x1 - x0)) * w + 1e-6).astype(np.int64)
        return np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)

    def sub_view(self, oy: int, ox: int, s: int, out_size: int) -> "View":
        """The view covering output pixels [oy, oy+s) x [ox, ox+s) of this one (in its flipped frame)."""
        n = self.size
        if self.flip:
            ox = n - ox - s
        x0, y0, x1, y1 = self.box
        bw, bh = (x1 - x0) / n, (y1 - y0) / n
        return View((x0 + ox * bw, y0 + oy * bh, x0 + (ox + s) * bw, y0 + (oy + s) * bh), out_size, self.flip)


def student_view(w: int, h: int, size: int, rng: np.random.Generator, crop: str, crop_scale, hflip: bool) -> View:
    """Square crop (center, or random side in crop_scale x shorter side) resampled to size."""
    side = min(w, h)
    if crop == "random":
        side = side * float(rng.uniform(*crop_scale))
        px, py = float(rng.uniform(0, w - side)), float(rng.uniform(0, h - side))
    else:
        px, py = (w - side) / 2, (h - side) / 2
    flip = bool(hflip and rng.random() < 0.5)
    return View((px / w, py / h, (px + side) / w, (py + side) / h), int(size), flip)


def teacher_footprint(size: int, scale: Sequence[float], rng: np.random.Generator) -> tuple[int, int, int]:
    """(oy, ox, s): a random s x s footprint in an size x size student output, s = size / t."""
    lo = max(1, math.ceil(size / float(scale[1])))
    hi = max(lo, min(size, math.floor(size / float(scale[0]))))
    s = int(rng.integers(lo, hi + 1))
    return int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1)), s


# -- masks -----------------------------------------------------------------------------------
class MaskSpec:
    """One mask at its own resolution, sampled onto any View."""

    def __init__(self, h: int, w: int, counts: np.ndarray | None = None, array: np.ndarray | None = None):
        self.h, self.w, self.counts, self.array = h, w, counts, array

    def sample(self, view: View) -> np.ndarray:
        """(size, size) bool: the mask under the view's output pixels (mirrored if the view is)."""
        ys, xs = view.sample_positions(self.w, self.h)
        if self.counts is not None:
            out = rle_sample(self.counts, self.h, self.w, ys, xs)
        else:
            out = self.array[np.ix_(ys, xs)]
        return out[:, ::-1] if view.flip else out


def sample_masks(specs: Sequence[MaskSpec], view: View, max_masks: int) -> np.ndarray:
    """Masks under a view, empty ones dropped, at most max_masks, in spec order: (M, n, n) bool."""
    out = []
    for spec in specs:
        m = spec.sample(view)
        if m.any():
            out.append(m)
            if len(out) >= max_masks:
                break
    n = view.size
    return np.stack(out) if out else np.zeros((0, n, n), dtype=bool)


def parse_sa1b_json(raw: bytes | str) -> list[MaskSpec]:
    """SA-1B per-image JSON -> MaskSpecs (RLE), in file order. Raises on malformed content."""
    data = json.loads(raw)
    anns = data["annotations"] if isinstance(data, dict) else data
    specs = []
    for a in anns:
        counts, h, w = rle_counts(a["segmentation"])
        specs.append(MaskSpec(h, w, counts=counts))
    return specs


def coco_specs(anns: Sequence[dict], hw: tuple[int, int]) -> list[MaskSpec]:
    """COCO annotations (polygons or RLE, crowd or not) of one image -> MaskSpecs."""
    specs = []
    for a in anns:
        seg = a["segmentation"]
        if isinstance(seg, dict):
            counts, h, w = rle_counts(seg)
            specs.append(MaskSpec(h, w, counts=counts))
        elif isinstance(seg, list) and seg:
            h, w = hw
            specs.append(MaskSpec(h, w, array=polygons_rasterize(seg, h, w)))
    return specs


# -- dataset ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleSpec:
    """What the dataset renders: stage, sizes and mask options (picklable, for workers)."""

    stage: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_masks: int = 150
    crop: str = "center"
    crop_scale: tuple[float, float] = (0.5, 1.0)
    hflip: bool = False
    crops_per_image: int = 2
    teacher_size: int = 0  # 0: the student size
    teacher_scale: tuple[float, float] = (2.0, 4.0)
    mask_max_res: int = 448
    default_size: int = 224

    @classmethod
    def from_config(cls, cfg, backbone) -> "SampleSpec":
        """The spec a training run (a TrainConfig) renders with, normalised for `backbone`."""
        return cls(
            stage=cfg.stage, mean=tuple(getattr(backbone, "mean", None) or IMAGENET_MEAN),
            std=tuple(getattr(backbone, "std", None) or IMAGENET_STD), max_masks=cfg.max_masks, crop=cfg.crop,
            crop_scale=tuple(cfg.crop_scale), hflip=cfg.hflip, crops_per_image=cfg.crops_per_image,
            teacher_size=cfg.teacher_size, teacher_scale=tuple(cfg.teacher_scale), mask_max_res=cfg.mask_max_res,
            default_size=cfg.size,
        )


class MaskedImageDataset:
    """Map-style dataset over ImageRecords. Key: index, or (index, size, seed) from StepSampler.

    Item (stage 1): image (3, S, S) float32 normalised; masks (M, S, S) bool; index; skipped.
    Stage 2 adds t_images (K, 3, T, T), t_masks (K, Mt, m, m) bool with m = min(T, mask_max_res),
    and t_boxes (K, 3) = (oy, ox, s), each teacher crop's footprint in the student output.
    """

    def __init__(self, records: Sequence[ImageRecord], spec: SampleSpec):
        if not records:
            raise InputError("no training images")
        self.records = list(records)
        self.spec = spec
        self._files: dict[str, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}
        return state

    # -- reading ----------------------------------------------------------------------------
    def _read(self, ref: FileRef) -> bytes:
        if ref.offset < 0:
            return Path(ref.path).read_bytes()
        if self._pid != os.getpid():  # forked into a worker: never share file positions
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(ref.path)
        if f is None:
            f = self._files[ref.path] = open(ref.path, "rb")
        f.seek(ref.offset)
        data = f.read(ref.size)
        if len(data) != ref.size:
            raise OSError(f"tar member {ref.member} is truncated")
        return data

    def _load(self, rec: ImageRecord):
        """(PIL RGB image, mask specs or None for computed masks). Raises on unreadable input."""
        from PIL import Image

        with Image.open(io.BytesIO(self._read(rec.image))) as im:
            im.load()
            img = rgb_image(im, rec.image.member or str(rec.image.path))  # 16-bit and float images scaled, not clipped
        specs = None
        if rec.mask_kind == "sa1b":
            specs = parse_sa1b_json(self._read(rec.mask_ref))
        elif rec.mask_kind == "coco":
            h, w = rec.coco_size
            specs = coco_specs(rec.coco_anns, (h or img.height, w or img.width))
        return img, specs

    # -- rendering --------------------------------------------------------------------------
    def _render(self, img, view: View) -> np.ndarray:
        from PIL import Image

        out = img.resize((view.size, view.size), Image.BICUBIC, box=view.pixel_box(img.width, img.height))
        arr = np.array(out)  # a writable copy
        return np.ascontiguousarray(arr[:, ::-1]) if view.flip else arr

    def _masks(self, rec: ImageRecord, specs, img, view: View, rgb: np.ndarray | None = None) -> np.ndarray:
        sp = self.spec
        if rec.mask_kind in ("felzenszwalb", "slic"):
            from .masks import superpixel_masks

            if rgb is None or rgb.shape[0] != view.size:
                rgb = self._render(img, view)
            return superpixel_masks(np.ascontiguousarray(rgb), rec.mask_kind, sp.max_masks)
        if rec.mask_kind == "none" or not specs:
            return np.zeros((0, view.size, view.size), dtype=bool)
        return sample_masks(specs, view, sp.max_masks)

    def _to_tensor(self, rgb: np.ndarray):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.spec.mean).view(3, 1, 1)
        std = torch.tensor(self.spec.std).view(3, 1, 1)
        return (x - mean) / std

    def render(self, rec: ImageRecord, img, specs, size: int, rng: np.random.Generator) -> dict[str, Any]:
        import torch

        sp = self.spec
        view = student_view(img.width, img.height, size, rng, sp.crop, sp.crop_scale, sp.hflip)
        rgb = self._render(img, view)
        item: dict[str, Any] = {"image": self._to_tensor(rgb)}
        if sp.stage == 1:
            item["masks"] = torch.from_numpy(self._masks(rec, specs, img, view, rgb))
            return item
        T = sp.teacher_size or size
        m = min(T, sp.mask_max_res)
        t_images, t_masks, boxes = [], [], []
        for _ in range(sp.crops_per_image):
            oy, ox, s = teacher_footprint(size, sp.teacher_scale, rng)
            tv = view.sub_view(oy, ox, s, T)
            t_rgb = self._render(img, tv)
            t_images.append(self._to_tensor(t_rgb))
            mv = View(tv.box, m, tv.flip)
            t_masks.append(self._masks(rec, specs, img, mv, t_rgb if m == T else None))
            boxes.append((oy, ox, s))
        item["t_images"] = torch.stack(t_images)
        item["t_masks"] = pad_stack([torch.from_numpy(x) for x in t_masks])
        item["t_boxes"] = torch.tensor(boxes, dtype=torch.long)
        return item

    def __getitem__(self, key) -> dict[str, Any]:
        if isinstance(key, (tuple, list)):
            index, size, seed = int(key[0]), int(key[1]), int(key[2])
        else:
            index, size, seed = int(key), self.spec.default_size, 0
        skipped: list[str] = []
        n = len(self.records)
        for attempt in range(MAX_SKIP_TRIES):
            rec = self.records[(index + attempt) % n]
            try:
                img, specs = self._load(rec)
            except Exception as e:  # corrupt image / JSON / RLE / tar member: skip, count, go on
                first = re.sub(r" <[^>]* at 0x[0-9a-f]+>", "", str(e).splitlines()[0][:160]) if str(e) else ""  # no object addresses
                skipped.append(f"{rec.key}: {type(e).__name__}: {first}")
                continue
            rng = np.random.default_rng([seed & 0xFFFFFFFF, (index + attempt) % n])
            item = self.render(rec, img, specs, size, rng)
            item["index"] = (index + attempt) % n
            item["skipped"] = skipped
            return item
        raise InputError(
            f"{min(MAX_SKIP_TRIES, n)} unreadable samples in a row from {self.records[index % n].key} (the last: {skipped[-1]}); "
            "check the data folder"
        )


def pad_stack(masks: Sequence[Any]):
    """Stack (M_i, h, w) bool tensors to (N, max M_i, h, w), padding with empty masks."""
    import torch

    M = max((int(m.shape[0]) for m in masks), default=0)
    h, w = masks[0].shape[-2:]
    out = torch.zeros(len(masks), M, h, w, dtype=torch.bool)
    for i, m in enumerate(masks):
        out[i, : m.shape[0]] = m
    return out


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch items: stack images, pad masks to the largest count, gather skipped keys."""
    import torch

    batch: dict[str, Any] = {
        "image": torch.stack([it["image"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "skipped": [s for it in items for s in it["skipped"]],
    }
    if "masks" in items[0]:
        batch["masks"] = pad_stack([it["masks"] for it in items])
    if "t_images" in items[0]:
        batch["t_images"] = torch.stack([it["t_images"] for it in items])  # (B, K, 3, T, T)
        K = items[0]["t_masks"].shape[0]
        flat = pad_stack([m for it in items for m in it["t_masks"]])  # (B*K, M, m, m)
        batch["t_masks"] = flat.view(len(items), K, *flat.shape[1:])
        batch["t_boxes"] = torch.stack([it["t_boxes"] for it in items])  # (B, K, 3)
    return batch


# -- sampling ---------------------------------------------------------------------------------
class StepSampler:
    """Batch sampler over optimisation steps: yields this rank's [(index, size, seed), ...].

    Step k of epoch e = k // steps_per_epoch takes the global batch
    perm_e[pos * G : (pos + 1) * G] (perm_e: a permutation seeded by (seed, e); the last
    incomplete global batch of an epoch is dropped) and gives rank r the items r, r + W, ...
    So a run on W ranks sees, per step, exactly the images a single process with the same
    global batch sees, and starting at step k (resume) gives the same stream as running on.
    size: one of `sizes`, drawn per step from (seed, step), the same on every rank.
    """

    def __init__(self, n: int, global_batch: int, sizes: Sequence[int], seed: int = 0, rank: int = 0,
                 world: int = 1, start_step: int = 0, total_steps: int = 0):
        if global_batch % world:
            raise ConfigError(f"batch size {global_batch} is not divisible by the {world} processes; use a multiple of {world}")
        if n < global_batch:
            raise InputError(f"only {n} training images for a global batch of {global_batch}; add images or lower --batch-size")
        self.n, self.G, self.sizes = n, global_batch, [int(s) for s in sizes]
        self.seed, self.rank, self.world = int(seed), rank, world
        self.start, self.total = int(start_step), int(total_steps)
        self._perm_epoch, self._perm = -1, None

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.G

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 7]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, step: int) -> list[tuple[int, int, int]]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        ids = self._permutation(epoch)[pos * self.G : (pos + 1) * self.G]
        size = self.sizes[int(np.random.default_rng([self.seed, step, 11]).integers(len(self.sizes)))]
        sample_seed = (self.seed * 1_000_003 + epoch) & 0xFFFFFFFF
        return [(int(i), size, sample_seed) for i in ids[self.rank :: self.world]]

    def __iter__(self):
        for step in range(self.start, self.total):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.total - self.start)
