"""Readers for the interactive-segmentation datasets, in the on-disk layouts RITM's evaluation
reads (Sofiiuk et al. 2022, `isegm/data/datasets`; SimpleClick uses the same files):

- **SBD** (training): `img/NAME.jpg`, `inst/NAME.mat` (a MATLAB struct `GTinst` whose first
  field, `Segmentation`, is the instance-id map, 0 = background) and `train.txt` / `val.txt`
  listing the names. Objects under 80 pixels (RITM `min_object_area=80`) or filling less than
  8% of their bounding box (RITM `buggy_mask_thresh=0.08`) are dropped.
- **GrabCut**: `data_GT/*` images, `boundary_GT/*` masks of the same stem (values 255 object,
  128 the uncertain boundary band - ignored -, 0 background); 50 images, one object each.
- **Berkeley**: RITM's copy is `images/*` + `masks/*` read like GrabCut's masks (100 objects);
  a copy in GrabCut's own `data_GT` / `boundary_GT` folders is read too.
- **DAVIS** (the 345-frame interactive subset): `img/*.jpg`, `gt/*.png`; any non-zero value
  (in any channel) is the object.

Samples are dicts {"name", "image" (H, W, 3) uint8, "mask" (H, W) int64 with 1 object /
0 background / 255 ignored}, one per object; SBD training samples carry "instances" (the
whole instance map) instead, and the trainer picks an object per visit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, check_choice
from .clicks import IGNORE
from .datasets import IMAGE_SUFFIXES, SampleList, _check_root, _listing, _reading, read_image_and_map

LAYOUTS = ("grabcut", "berkeley", "davis", "sbd")
# (images folder, masks folder) per layout, in the order they are tried
FOLDERS = {
    "grabcut": (("data_GT", "boundary_GT"),),
    "berkeley": (("images", "masks"), ("data_GT", "boundary_GT")),
    "davis": (("img", "gt"),),
    "sbd": (("img", "inst"),),
}
MIN_OBJECT_AREA = 80  # RITM SBDDataset(min_object_area=80)
BUGGY_MASK_RATIO = 0.08  # RITM SBDDataset(buggy_mask_thresh=0.08)


def read_mask_image(path: Path) -> np.ndarray:
    """(H, W) int array of a mask image; colour masks give the maximum over the channels."""
    from PIL import Image

    with _reading("mask", path), Image.open(path) as img:
        arr = np.asarray(img.convert("L") if img.mode in ("P", "1") else img)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr.astype(np.int64)


def trimap_to_mask(raw: np.ndarray) -> np.ndarray:
    """GrabCut / Berkeley masks: 128 -> ignored, above 128 -> object, the rest background."""
    mask = np.zeros(raw.shape, dtype=np.int64)
    mask[raw > 128] = 1
    mask[raw == 128] = IGNORE
    return mask


def read_sbd_instances(path: Path) -> np.ndarray:
    """The instance-id map of an SBD `inst/*.mat` file (GTinst.Segmentation)."""
    from scipy.io import loadmat

    with _reading("SBD instance file", path):
        try:
            data = loadmat(str(path))
            seg = data["GTinst"][0][0][0]
        except (KeyError, IndexError, TypeError, NotImplementedError) as exc:
            raise ValueError(str(exc)) from None
    return np.asarray(seg, dtype=np.int64)


def sbd_objects(instances: np.ndarray, min_area: int = MIN_OBJECT_AREA, min_ratio: float = BUGGY_MASK_RATIO) -> list[int]:
    """Instance ids kept for training: at least `min_area` pixels and `min_ratio` of their box."""
    keep = []
    for obj in np.unique(instances):
        if obj <= 0:
            continue
        ys, xs = np.nonzero(instances == obj)
        area = len(ys)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        if area >= min_area and area / box >= min_ratio:
            keep.append(int(obj))
    return keep


def detect_layout(root: Path) -> str | None:
    if (root / "inst").is_dir() and (root / "img").is_dir():
        return "sbd"
    for layout in ("davis", "berkeley", "grabcut"):  # each by its own folders (Berkeley in data_GT/ reads as GrabCut)
        a, b = FOLDERS[layout][0]
        if (root / a).is_dir() and (root / b).is_dir():
            return layout
    return None


def _layout_hint() -> str:
    return ("GrabCut: data_GT/ + boundary_GT/; Berkeley: images/ + masks/; DAVIS: img/ + gt/; "
            "SBD: img/ + inst/ + train.txt")


def _mask_loader(layout: str):
    def load(item: tuple[Path, Path]) -> dict[str, Any]:
        img_path, mask_path = item
        image, raw = read_image_and_map(img_path, mask_path, read_mask_image, "mask")
        mask = (raw > 0).astype(np.int64) if layout == "davis" else trimap_to_mask(raw)
        return {"name": img_path.stem, "image": image, "mask": mask}

    return load


def _open_mask_folders(root: Path, layout: str) -> SampleList:
    folders = next(((root / a, root / b) for a, b in FOLDERS[layout] if (root / a).is_dir() and (root / b).is_dir()), None)
    if folders is None:
        want = " or ".join(f"{a}/ + {b}/" for a, b in FOLDERS[layout])
        raise InputError(f"{root} is not a {layout} dataset: expected {want} (found: {_listing(root)})")
    images, masks = folders
    by_stem = {p.stem: p for p in masks.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    items, missing = [], []
    for img in sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        stem = img.name.split(".")[0]  # RITM matches the name before the first dot
        if stem in by_stem:
            items.append((img, by_stem[stem]))
        else:
            missing.append(img.name)
    if missing:
        raise InputError(f"{len(missing)} images in {images} have no mask in {masks} (e.g. {missing[0]}); the dataset is incomplete")
    if not items:
        raise InputError(f"no images in {images}; the {layout} dataset is empty")
    return SampleList(layout, items, _mask_loader(layout), {"layout": layout})


def _sbd_loader(item: tuple[Path, Path]) -> dict[str, Any]:
    img_path, inst_path = item
    image, inst = read_image_and_map(img_path, inst_path, read_sbd_instances, "instance map")
    kept = sbd_objects(inst)
    inst = np.where(np.isin(inst, kept), inst, 0)
    return {"name": img_path.stem, "image": image, "instances": inst}


def open_sbd(root: Path, split: str = "train") -> SampleList:
    """SBD in RITM's layout: one sample per listed image (the trainer picks the object)."""
    listing = root / f"{split}.txt"
    if not (root / "img").is_dir() or not (root / "inst").is_dir() or not listing.is_file():
        raise InputError(f"{root} is not an SBD dataset: expected img/, inst/ and {split}.txt (found: {_listing(root)})")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    items = [(root / "img" / f"{n}.jpg", root / "inst" / f"{n}.mat") for n in names]
    absent = [str(p) for pair in items for p in pair if not p.is_file()]
    if absent:
        raise InputError(f"{len(absent)} files listed by {listing.name} are missing (e.g. {absent[0]}); the SBD copy is incomplete")
    if not items:
        raise InputError(f"{listing} lists no images")
    return SampleList("sbd", items, _sbd_loader, {"layout": "sbd", "split": split})


def open_interactive(root: str | Path, layout: str = "auto", split: str = "val") -> SampleList:
    """A dataset for the interactive probe; layout auto / grabcut / berkeley / davis / sbd."""
    root = _check_root(root)
    check_choice("interactive data layout", layout, ("auto", *LAYOUTS))
    if layout == "auto":
        layout = detect_layout(root) or ""
        if not layout:
            raise InputError(f"{root} is in no interactive-segmentation layout ({_layout_hint()}); found: {_listing(root)}")
    if layout == "sbd":
        return open_sbd(root, split)
    return _open_mask_folders(root, layout)


def sbd_eval_objects(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """An SBD sample as evaluation samples, one per kept object."""
    inst = sample["instances"]
    return [{"name": f"{sample['name']}#{obj}", "image": sample["image"], "mask": (inst == obj).astype(np.int64)}
            for obj in np.unique(inst) if obj > 0]


__all__ = ["LAYOUTS", "detect_layout", "open_interactive", "open_sbd", "read_mask_image", "read_sbd_instances", "sbd_eval_objects",
           "sbd_objects", "trimap_to_mask"]
