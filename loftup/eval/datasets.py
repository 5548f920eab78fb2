"""Dataset readers for the probes, each reading a dataset's public on-disk layout.

Every reader checks the layout up front and raises one `InputError` naming what is missing,
so a wrong folder fails before any model is loaded. Samples are dicts of numpy arrays:
`image` (H, W, 3) uint8 plus the task's targets, and `name`.

Layouts (split = "train" or "val"):

- COCO-Stuff 27 (the STEGO / FeatUp protocol): ROOT[/cocostuff]/images/{split}2017/*.jpg and
  ROOT[/cocostuff]/annotations/{split}2017/*.png (the "stuffthingmaps": fine labels 0..181,
  255 unlabelled; a folder named stuffthingmaps/ instead of annotations/ works too). The
  182 fine labels are merged into the 27 coarse classes (12 thing + 15 stuff supercategories).
  If ROOT/curated/{split}2017/Coco164kFull_Stuff_Coarse_7.txt exists (STEGO's curated image
  list) only those images are used.
- Cityscapes: ROOT/leftImg8bit/{split}/CITY/*_leftImg8bit.png and
  ROOT/gtFine/{split}/CITY/*_gtFine_labelIds.png; label ids map to the 19 train ids.
- NAVI: ROOT/OBJECT/SCENE/{annotations.json, images/*.jpg, depth/*.png} (depth PNGs in
  millimetres; the `split` field of annotations.json chooses train / val; the focal length
  from annotations.json gives the surface normals, computed from depth).
- Any RGB-D folder: ROOT[/{split}]/images/* (or rgb/, image/) and ROOT[/{split}]/depth/* with
  the same file stems (16-bit PNG in millimetres, or .npy in metres; 0 = invalid), optional
  normals/ (.npy (H, W, 3) or RGB PNG, n = rgb / 127.5 - 1) and intrinsics.json ({"fx": ...})
  to compute normals from depth. Without train/ and val/ subfolders every 5th image is val.
- DAVIS-2017: ROOT/JPEGImages/480p/VIDEO/*.jpg, ROOT/Annotations/480p/VIDEO/*.png (palette
  PNGs, 0 = background, 1..N objects) and ROOT/ImageSets/2017/{split}.txt.
- Matting: ROOT[/{split}]/images/* (or image/, img/, clip_img/) and ROOT[/{split}]/alpha/*
  (or alphas/, matte/, mattes/, matting/), matched by file stem, searched recursively;
  alpha from a greyscale PNG or the alpha channel of an RGBA PNG.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError, check_choice

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
SPLITS = ("train", "val")
IGNORE = 255

# ----------------------------------------------------------------------------------------
# label tables

COCOSTUFF27_CLASSES = (
    # 12 thing supercategories
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen",
    "accessory", "animal", "outdoor", "person", "sports", "vehicle",
    # 15 stuff supercategories
    "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial", "textile", "wall",
    "window", "building", "ground", "plant", "sky", "solid", "structural", "water",
)

# Thing fine labels (0..90, COCO category id - 1) come in contiguous runs per supercategory:
# (first fine label, last fine label, coarse class).
_COCO_THING_RUNS = (
    (0, 0, 9), (1, 8, 11), (9, 14, 8), (15, 24, 7), (25, 32, 6), (33, 42, 10),
    (43, 50, 5), (51, 60, 2), (61, 70, 3), (71, 76, 0), (77, 82, 1), (83, 90, 4),
)
# Stuff fine labels (91..181) listed per coarse class.
_COCO_STUFF_MEMBERS = {
    12: (101, 102),  # ceiling-other, ceiling-tile
    13: (100, 113, 114, 115, 116, 117),  # carpet, floor-*
    14: (120, 121, 152, 169),  # food-other, fruit, salad, vegetable
    15: (97, 106, 107, 109, 111, 122, 129, 132, 155, 160, 164),  # cabinet, counter, ..., table
    16: (99, 131, 138, 142),  # cardboard, metal, paper, plastic
    17: (91, 92, 103, 104, 108, 130, 136, 140, 151, 166, 167),  # banner, blanket, ..., towel
    18: (170, 171, 172, 173, 174, 175, 176),  # wall-*
    19: (179, 180),  # window-blind, window-other
    20: (94, 95, 127, 150, 157, 165),  # bridge, building-other, house, roof, skyscraper, tent
    21: (110, 124, 125, 135, 139, 143, 144, 146, 148, 153, 158),  # dirt, gravel, ..., snow
    22: (93, 96, 118, 123, 128, 133, 141, 162, 168),  # branch, bush, ..., tree
    23: (105, 156),  # clouds, sky-other
    24: (126, 134, 149, 159, 161, 181),  # hill, mountain, rock, solid-other, stone, wood
    25: (98, 112, 137, 145, 163),  # cage, fence, net, railing, structural-other
    26: (119, 147, 154, 177, 178),  # fog, river, sea, water-other, waterdrops
}


def cocostuff27_lut() -> np.ndarray:
    """(256,) uint8 table: COCO-Stuff fine label (0..181) -> coarse class (0..26); else 255."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for first, last, coarse in _COCO_THING_RUNS:
        lut[first : last + 1] = coarse
    for coarse, members in _COCO_STUFF_MEMBERS.items():
        lut[list(members)] = coarse
    return lut


CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)
# label id of each train id, in train-id order (cityscapesScripts' labels table)
_CITYSCAPES_TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def cityscapes_lut() -> np.ndarray:
    """(256,) uint8 table: Cityscapes label id -> train id 0..18; every other id -> 255."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[list(_CITYSCAPES_TRAIN_LABEL_IDS)] = np.arange(len(_CITYSCAPES_TRAIN_LABEL_IDS))
    return lut


# ----------------------------------------------------------------------------------------
# file reading


@contextlib.contextmanager
def _reading(what: str, path: Path):
    """An unreadable or damaged file becomes one InputError naming it."""
    try:
        yield
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {what} {path} ({type(exc).__name__}); replace or remove the file") from None


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    from ..io import rgb_image

    with _reading("image", path), Image.open(path) as img:
        return np.asarray(rgb_image(img, str(path)), dtype=np.uint8)  # 16-bit images scaled, not clipped


def read_label_png(path: Path) -> np.ndarray:
    """Label map (H, W) int64 from a PNG of indices (palette or greyscale), unchanged values."""
    from PIL import Image

    with _reading("label map", path), Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16", "1"):
            img = img.convert("L")
        return np.asarray(img).astype(np.int64)


def read_depth(path: Path, png_scale: float = 1e-3) -> np.ndarray:
    """Depth (H, W) float32 with 0 for invalid: .npy as stored, PNG / TIFF times png_scale."""
    from PIL import Image

    with _reading("depth map", path):
        if path.suffix == ".npy":
            depth = np.load(path).astype(np.float32)
        else:
            with Image.open(path) as img:
                raw = np.asarray(img)
            depth = raw.astype(np.float32) * (1.0 if raw.dtype.kind == "f" else png_scale)
    if depth.ndim == 3:
        depth = depth[..., 0]
    depth[~np.isfinite(depth) | (depth < 0)] = 0
    return depth


def read_normals(path: Path) -> np.ndarray:
    """Normals (H, W, 3) float32 from .npy or an RGB PNG (rgb / 127.5 - 1); zero = invalid."""
    if path.suffix == ".npy":
        with _reading("normal map", path):
            n = np.load(path).astype(np.float32)
        if n.ndim == 3 and n.shape[0] == 3 and n.shape[-1] != 3:
            n = n.transpose(1, 2, 0)
    else:
        rgb = read_rgb(path).astype(np.float32)
        n = rgb / 127.5 - 1.0
        n[(rgb == 0).all(-1)] = 0
    n[~np.isfinite(n).all(-1)] = 0
    return n


def read_alpha(path: Path) -> np.ndarray:
    """Alpha matte (H, W) float32 in [0, 1]: the A channel of RGBA / LA images, else the grey level."""
    from PIL import Image

    with _reading("alpha matte", path), Image.open(path) as img:
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            a = np.asarray(img.convert("RGBA"))[..., 3]
        else:
            a = np.asarray(img.convert("L"))
    return a.astype(np.float32) / 255.0


def normals_from_depth(depth: np.ndarray, fx: float, fy: float | None = None, cx: float | None = None,
                       cy: float | None = None) -> np.ndarray:
    """Surface normals (H, W, 3) of a depth map (pinhole camera, +z forward, +y down).

    Back-projects every pixel, takes central differences along rows and columns and their
    cross product; normals point towards the camera. Pixels next to invalid depth get 0.
    """
    depth = np.asarray(depth, dtype=np.float64)
    H, W = depth.shape
    fy = fx if fy is None else fy
    cx = (W - 1) / 2 if cx is None else cx
    cy = (H - 1) / 2 if cy is None else cy
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    points = np.stack([(u - cx) * depth / fx, (v - cy) * depth / fy, depth], axis=-1)
    du = np.gradient(points, axis=1)
    dv = np.gradient(points, axis=0)
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)
    facing = (n * points).sum(-1) > 0
    n[facing] *= -1
    valid = depth > 0
    ok = valid.copy()
    ok[:, 1:] &= valid[:, :-1]
    ok[:, :-1] &= valid[:, 1:]
    ok[1:, :] &= valid[:-1, :]
    ok[:-1, :] &= valid[1:, :]
    n[~ok] = 0
    return n.astype(np.float32)


# ----------------------------------------------------------------------------------------
# resizing (paper protocol: shorter side to `size`, centre crop size x size)


def _resize_plane(arr: np.ndarray, hw: tuple[int, int], resample: str) -> np.ndarray:
    from PIL import Image

    H, W = hw
    if arr.shape[:2] == (H, W):
        return arr
    mode = getattr(Image.Resampling, resample.upper())
    if arr.dtype == np.uint8 and arr.ndim == 3:
        return np.asarray(Image.fromarray(arr).resize((W, H), mode))
    if arr.ndim == 3:
        return np.stack([_resize_plane(arr[..., c], hw, resample) for c in range(arr.shape[2])], axis=-1)
    kind = arr.dtype
    out = np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize((W, H), mode))
    return out.astype(kind) if kind.kind in "iu" else out.astype(np.float32)


def resize_sample(sample: dict[str, Any], size: int | None, crop: bool = True, multiple: int = 1) -> dict[str, Any]:
    """Resize every array of a sample: shorter side to `size`, then a centre crop to size x size.

    size None keeps the size. Without crop, sides are rounded down to `multiple`. Images use
    bicubic, alpha bilinear, label / depth / normals nearest (no mixing across boundaries).
    """
    image = sample["image"]
    H, W = image.shape[:2]
    if size is None:
        th, tw = H, W
    else:
        s = size / min(H, W)
        th, tw = max(size, round(H * s)), max(size, round(W * s))
    if not crop:
        th, tw = max(multiple, th // multiple * multiple), max(multiple, tw // multiple * multiple)
    resample = {"image": "bicubic", "alpha": "bilinear"}
    out = dict(sample)
    for key, value in sample.items():
        if isinstance(value, np.ndarray) and value.ndim >= 2 and value.shape[:2] == (H, W):
            plane = _resize_plane(value, (th, tw), resample.get(key, "nearest"))
            if crop and size is not None:
                top, left = (th - size) // 2, (tw - size) // 2
                plane = plane[top : top + size, left : left + size]
            out[key] = np.ascontiguousarray(plane)
    if "focal" in sample and sample["focal"] is not None:
        out["focal"] = float(sample["focal"]) * th / H
    return out


# ----------------------------------------------------------------------------------------
# generic pieces


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _listing(root: Path) -> str:
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    except OSError:
        return "(unreadable)"
    if not names:
        return "(empty)"
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def _check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise InputError(f"data folder {root} does not exist; pass --data DIR")
    if not root.is_dir():
        raise InputError(f"--data {root} is a file; pass the dataset's root folder")
    return root


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


@dataclass
class SampleList:
    """A list of samples read lazily by `loader(item)`; `meta` holds class names and the like."""

    name: str
    items: list[Any]
    loader: Callable[[Any], dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.loader(self.items[i])

    def subset(self, n: int | None) -> SampleList:
        """The first n samples (all if n is None)."""
        if n is None or n >= len(self.items):
            return self
        return SampleList(self.name, self.items[:n], self.loader, self.meta)


# ----------------------------------------------------------------------------------------
# semantic segmentation


def read_image_and_map(img_path: Path, map_path: Path, read_map, what: str) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and its per-pixel map (labels, a mask, instances) read by `read_map`;
    InputError naming `what` when their sizes differ."""
    image = read_rgb(img_path)
    raw = read_map(map_path)
    if raw.shape != image.shape[:2]:
        raise InputError(f"{what} {map_path} is {raw.shape[1]}x{raw.shape[0]} but its image is "
                         f"{image.shape[1]}x{image.shape[0]}; the dataset is damaged")
    return image, raw


def seg_loader(lut: np.ndarray):
    """Loader of (image, label PNG) pairs whose raw label values map to classes through `lut`."""
    def load(item: tuple[Path, Path]) -> dict[str, Any]:
        img_path, label_path = item
        image, raw = read_image_and_map(img_path, label_path, read_label_png, "label map")
        label = lut[np.clip(raw, 0, 255)].astype(np.int64)
        return {"name": img_path.stem, "image": image, "label": label}

    return load


def _coco_root(root: Path) -> Path:
    return root / "cocostuff" if (root / "cocostuff").is_dir() and not (root / "images").is_dir() else root


def is_cocostuff(root: Path) -> bool:
    r = _coco_root(root)
    return (r / "images").is_dir() and _first_dir(r, ("annotations", "stuffthingmaps", "stuffthingmaps_trainval2017")) is not None


def open_cocostuff27(root: str | Path, split: str = "train") -> SampleList:
    """COCO-Stuff with the 27 coarse classes (layout in the module doc)."""
    check_choice("split", split, SPLITS)
    root = _coco_root(_check_root(root))
    img_dir = root / "images" / f"{split}2017"
    ann_base = _first_dir(root, ("annotations", "stuffthingmaps", "stuffthingmaps_trainval2017"))
    missing = []
    if not img_dir.is_dir():
        missing.append(f"images/{split}2017/")
    if ann_base is None or not (ann_base / f"{split}2017").is_dir():
        missing.append(f"annotations/{split}2017/ (the stuffthingmaps PNGs)")
    if missing:
        raise InputError(f"{root} is not a COCO-Stuff folder: missing {' and '.join(missing)}; found: {_listing(root)}")
    ann_dir = ann_base / f"{split}2017"
    curated = root / "curated" / f"{split}2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    if curated.is_file():
        ids = [line.strip() for line in curated.read_text().splitlines() if line.strip()]
        images = [img_dir / f"{i}.jpg" for i in ids]
        absent = [p for p in images if not p.is_file()]
        if absent:
            raise InputError(f"{curated.name} lists {len(absent)} images missing from {img_dir} (e.g. {absent[0].name}); "
                             "complete the download or remove the curated list")
    else:
        images = _images_in(img_dir)
    pairs = []
    for img in images:
        label = ann_dir / f"{img.stem}.png"
        if not label.is_file():
            raise InputError(f"no stuffthingmap for {img.name}: expected {label}; every image needs its label PNG")
        pairs.append((img, label))
    if not pairs:
        raise InputError(f"no images in {img_dir}; the COCO-Stuff {split} split is empty")
    return SampleList(f"cocostuff27-{split}", pairs, seg_loader(cocostuff27_lut()),
                      {"num_classes": 27, "class_names": list(COCOSTUFF27_CLASSES), "task": "seg"})


def is_cityscapes(root: Path) -> bool:
    return (root / "leftImg8bit").is_dir() or (root / "gtFine").is_dir()


def open_cityscapes(root: str | Path, split: str = "train") -> SampleList:
    """Cityscapes fine annotations, 19 train ids (layout in the module doc)."""
    check_choice("split", split, SPLITS)
    root = _check_root(root)
    img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    missing = [f"{d.relative_to(root)}/" for d in (img_dir, gt_dir) if not d.is_dir()]
    if missing:
        raise InputError(f"{root} is not a Cityscapes folder: missing {' and '.join(missing)}; found: {_listing(root)}")
    pairs = []
    for img in _images_in(img_dir, recursive=True):
        if not img.name.endswith("_leftImg8bit.png"):
            continue
        stem = img.name[: -len("_leftImg8bit.png")]
        label = gt_dir / img.parent.name / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise InputError(f"no gtFine label ids for {img.name}: expected {label}")
        pairs.append((img, label))
    if not pairs:
        raise InputError(f"no *_leftImg8bit.png images under {img_dir}; expected leftImg8bit/{split}/CITY/*_leftImg8bit.png")
    return SampleList(f"cityscapes-{split}", pairs, seg_loader(cityscapes_lut()),
                      {"num_classes": 19, "class_names": list(CITYSCAPES_CLASSES), "task": "seg"})


def open_segmentation(root: str | Path, split: str = "train", layout: str = "auto") -> SampleList:
    """COCO-Stuff 27 or Cityscapes, detected from the folder unless `layout` names one."""
    root = _check_root(root)
    check_choice("segmentation layout", layout, ("auto", "cocostuff27", "cityscapes"))
    if layout == "cocostuff27" or (layout == "auto" and is_cocostuff(root)):
        return open_cocostuff27(root, split)
    if layout == "cityscapes" or (layout == "auto" and is_cityscapes(root)):
        return open_cityscapes(root, split)
    raise InputError(
        f"{root} is not a segmentation dataset: COCO-Stuff needs images/{split}2017/ and annotations/{split}2017/, "
        f"Cityscapes needs leftImg8bit/{split}/ and gtFine/{split}/; found: {_listing(root)}"
    )


# ----------------------------------------------------------------------------------------
# depth and surface normals


def _split_root(root: Path, split: str) -> tuple[Path, bool]:
    """(folder holding this split, whether the split is on disk as train/ + val/)."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root / split, True
    return root, False


def _depth_loader(png_scale: float):
    def load(item: dict[str, Any]) -> dict[str, Any]:
        image = read_rgb(item["image"])
        depth = read_depth(item["depth"], png_scale)
        if depth.shape != image.shape[:2]:
            raise InputError(f"depth map {item['depth']} is {depth.shape[1]}x{depth.shape[0]} but its image is "
                             f"{image.shape[1]}x{image.shape[0]}; store them at the same size")
        focal = item.get("focal")
        if focal is not None and item.get("focal_size"):
            focal = focal * min(image.shape[:2]) / min(item["focal_size"])
        if item.get("normals") is not None:
            normals = read_normals(item["normals"])
        elif focal is not None:
            normals = normals_from_depth(depth, focal)
        else:
            normals = None
        out = {"name": item["name"], "image": image, "depth": depth, "focal": focal}
        if normals is not None:
            out["normals"] = normals
        return out

    return load


def is_navi(root: Path) -> bool:
    return any(root.glob("*/*/annotations.json"))


def open_navi(root: str | Path, split: str = "train") -> SampleList:
    """NAVI objects and scenes (layout in the module doc); split from annotations.json."""
    check_choice("split", split, SPLITS)
    root = _check_root(root)
    scenes = sorted(p.parent for p in root.glob("*/*/annotations.json"))
    if not scenes:
        raise InputError(f"{root} is not a NAVI folder: no OBJECT/SCENE/annotations.json found; found: {_listing(root)}")
    items = []
    for scene in scenes:
        for sub in ("images", "depth"):
            if not (scene / sub).is_dir():
                raise InputError(f"NAVI scene {scene.relative_to(root)} has no {sub}/ folder; every scene needs images/ and depth/")
        try:
            annotations = json.loads((scene / "annotations.json").read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {scene / 'annotations.json'}: {exc}") from None
        for ann in annotations:
            if ann.get("split", "train") != split:
                continue
            image = scene / "images" / ann["filename"]
            depth = scene / "depth" / (Path(ann["filename"]).stem + ".png")
            if not image.is_file() or not depth.is_file():
                raise InputError(f"NAVI annotation {scene.relative_to(root)}/{ann['filename']} has no image or depth file")
            items.append({
                "name": f"{scene.parent.name}/{scene.name}/{image.stem}", "image": image, "depth": depth,
                "focal": float(ann["camera"]["focal_length"]) if "camera" in ann else None,
                "focal_size": tuple(ann["image_size"]) if "image_size" in ann else None,
            })
    if not items:
        raise InputError(f"NAVI folder {root} has no images in split {split!r} (annotations.json 'split' field)")
    return SampleList(f"navi-{split}", items, _depth_loader(1e-3), {"task": "depth", "relative_depth": True})


def open_rgbd_folder(root: str | Path, split: str = "train", png_scale: float = 1e-3) -> SampleList:
    """Any folder of RGB + depth (+ normals) images matched by file stem (module doc)."""
    check_choice("split", split, SPLITS)
    root = _check_root(root)
    base, on_disk = _split_root(root, split)
    img_dir = _first_dir(base, ("images", "rgb", "image"))
    depth_dir = base / "depth"
    missing = ([] if img_dir else ["images/ (or rgb/)"]) + ([] if depth_dir.is_dir() else ["depth/"])
    if missing:
        where = base if on_disk else root
        raise InputError(f"{where} is not an RGB-D folder: missing {' and '.join(missing)}; found: {_listing(where)}")
    normals_dir = base / "normals"
    depths = {p.stem: p for p in depth_dir.iterdir() if p.suffix.lower() in (".png", ".npy", ".tif", ".tiff")}
    normals = {p.stem: p for p in normals_dir.iterdir()} if normals_dir.is_dir() else {}
    focal = None
    for intr in (base / "intrinsics.json", root / "intrinsics.json"):
        if intr.is_file():
            focal = float(json.loads(intr.read_text())["fx"])
            break
    items = []
    for k, img in enumerate(_images_in(img_dir)):
        if img.stem not in depths:
            raise InputError(f"no depth map for {img.name} in {depth_dir}; every image needs depth/{img.stem}.png or .npy")
        if not on_disk and (k % 5 == 4) != (split == "val"):
            continue
        items.append({"name": img.stem, "image": img, "depth": depths[img.stem], "normals": normals.get(img.stem), "focal": focal})
    if not items:
        raise InputError(f"no images for split {split!r} in {img_dir}")
    return SampleList(f"rgbd-{split}", items, _depth_loader(png_scale), {"task": "depth", "relative_depth": False})


def open_depth(root: str | Path, split: str = "train", layout: str = "auto") -> SampleList:
    """NAVI or a generic RGB-D folder, detected unless `layout` names one."""
    root = _check_root(root)
    check_choice("depth layout", layout, ("auto", "navi", "rgbd"))
    if layout == "navi" or (layout == "auto" and is_navi(root)):
        return open_navi(root, split)
    return open_rgbd_folder(root, split)


# ----------------------------------------------------------------------------------------
# DAVIS-2017


@dataclass
class Video:
    """One DAVIS video: frame files and their annotation PNGs, in order."""

    name: str
    frames: list[Path]
    annotations: list[Path]

    def load(self) -> tuple[np.ndarray, np.ndarray, int]:
        """frames (T, H, W, 3) uint8, labels (T, H, W) int64, number of objects in the first frame."""
        frames = np.stack([read_rgb(p) for p in self.frames])
        labels = np.stack([read_label_png(p) for p in self.annotations])
        if labels.shape[1:] != frames.shape[1:3]:
            raise InputError(f"DAVIS video {self.name}: annotations are {labels.shape[2]}x{labels.shape[1]}, "
                             f"frames {frames.shape[2]}x{frames.shape[1]}; use the same resolution for both")
        n_objects = int(labels[0][labels[0] != IGNORE].max(initial=0))
        labels[(labels > n_objects) | (labels < 0)] = 0  # void / objects appearing later: background
        return frames, labels, n_objects


def open_davis2017(root: str | Path, split: str = "val", resolution: str = "480p") -> list[Video]:
    """DAVIS-2017 videos listed in ImageSets/2017/{split}.txt (layout in the module doc)."""
    root = _check_root(root)
    frames_root, ann_root = root / "JPEGImages" / resolution, root / "Annotations" / resolution
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    missing = [f"{p.relative_to(root)}{'/' if p.suffix == '' else ''}" for p in (frames_root, ann_root) if not p.is_dir()]
    if not listing.is_file():
        missing.append(f"ImageSets/2017/{split}.txt")
    if missing:
        raise InputError(f"{root} is not a DAVIS-2017 folder: missing {' and '.join(missing)}; found: {_listing(root)}")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    videos = []
    for name in names:
        fdir, adir = frames_root / name, ann_root / name
        if not fdir.is_dir() or not adir.is_dir():
            raise InputError(f"DAVIS video {name!r} from {listing.name} has no folder in JPEGImages/{resolution}/ or Annotations/{resolution}/")
        frames = _images_in(fdir)
        anns = []
        for f in frames:
            a = adir / f"{f.stem}.png"
            if not a.is_file():
                raise InputError(f"DAVIS video {name!r}: no annotation {a.name} for frame {f.name}")
            anns.append(a)
        if not frames:
            raise InputError(f"DAVIS video {name!r} has no frames in {fdir}")
        videos.append(Video(name, frames, anns))
    if not videos:
        raise InputError(f"{listing} lists no videos")
    return videos


# ----------------------------------------------------------------------------------------
# matting

MATTING_IMAGE_DIRS = ("images", "image", "img", "clip_img")
MATTING_ALPHA_DIRS = ("alpha", "alphas", "matte", "mattes", "matting")


def _matting_loader(item: tuple[Path, Path]) -> dict[str, Any]:
    img_path, alpha_path = item
    image = read_rgb(img_path)
    alpha = read_alpha(alpha_path)
    if alpha.shape != image.shape[:2]:
        raise InputError(f"alpha matte {alpha_path} is {alpha.shape[1]}x{alpha.shape[0]} but its image is "
                         f"{image.shape[1]}x{image.shape[0]}")
    return {"name": img_path.stem, "image": image, "alpha": alpha}


def open_matting(root: str | Path, split: str = "train") -> SampleList:
    """Image + alpha folders matched by file stem (module doc)."""
    check_choice("split", split, SPLITS)
    root = _check_root(root)
    base, on_disk = _split_root(root, split)
    img_dir, alpha_dir = _first_dir(base, MATTING_IMAGE_DIRS), _first_dir(base, MATTING_ALPHA_DIRS)
    missing = ([] if img_dir else ["images/"]) + ([] if alpha_dir else ["alpha/ (or matte/, matting/)"])
    if missing:
        where = base if on_disk else root
        raise InputError(f"{where} is not a matting folder: missing {' and '.join(missing)}; found: {_listing(where)}")
    alphas: dict[str, Path] = {}
    for p in _images_in(alpha_dir, recursive=True):
        alphas.setdefault(p.stem, p)
    items = []
    for k, img in enumerate(_images_in(img_dir, recursive=True)):
        if img.stem not in alphas:
            raise InputError(f"no alpha matte for {img.name} under {alpha_dir}; every image needs one with the same stem")
        if not on_disk and (k % 5 == 4) != (split == "val"):
            continue
        items.append((img, alphas[img.stem]))
    if not items:
        raise InputError(f"no images for split {split!r} in {img_dir}")
    return SampleList(f"matting-{split}", items, _matting_loader, {"task": "matting"})


__all__ = [
    "CITYSCAPES_CLASSES",
    "COCOSTUFF27_CLASSES",
    "SampleList",
    "Video",
    "cityscapes_lut",
    "cocostuff27_lut",
    "normals_from_depth",
    "open_cityscapes",
    "open_cocostuff27",
    "open_davis2017",
    "open_depth",
    "open_matting",
    "open_navi",
    "open_rgbd_folder",
    "open_segmentation",
    "read_alpha",
    "read_depth",
    "read_normals",
    "resize_sample",
]
