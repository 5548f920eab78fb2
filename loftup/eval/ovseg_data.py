"""Dataset readers and class names for the open-vocabulary probe (`loftup eval --probe ovseg`).

Each reader checks its layout up front and raises one `InputError` naming what is missing.
Samples are the eval package's dicts: `image` (H, W, 3) uint8, `label` (H, W) int64 with 255 =
ignore, `name`. Only the validation split is read (ovseg trains nothing). Layouts, as ProxyCLIP
(Lan et al., ECCV 2024; its configs and `custom_datasets.py`) and mmsegmentation read them:

- COCO-Object: ROOT/images/val2017/*.jpg and ROOT/annotations/val2017/*_instanceTrainIds.png
  (label 0 = background, 1..80 = the COCO thing classes in category order, 255 = ignore), the
  output of ProxyCLIP's / GroupViT's `cvt_coco_object.py` from COCO-Stuff 164k. 81 classes;
  the background class is predicted through ProxyCLIP's background words and probability
  threshold (see loftup.eval.ovseg).
- Cityscapes: ROOT/leftImg8bit/val/CITY/*_leftImg8bit.png and ROOT/gtFine/val/CITY/
  *_gtFine_labelIds.png, label ids mapped to the 19 train ids (the seg probe's reader).
- ADE20K (SceneParsing, ADEChallengeData2016): ROOT/images/validation/*.jpg and
  ROOT/annotations/validation/*.png with 0 = "other" (ignored) and 1..150 the classes
  (mmseg's `reduce_zero_label`: class k is label k - 1); ROOT/ADEChallengeData2016/ works too.

Class names by default are ProxyCLIP's own lists (configs/cls_*.txt of mc-lan/ProxyCLIP, which
it shares with SCLIP): COCO-Object's background words plus the 80 COCO names; Cityscapes' and
ADE20K's mmseg class names with their spaces removed ("trafficlight", "chestofdrawers"), as
ProxyCLIP prompts them. `--class-names FILE` replaces them (it must list every class).

Class-name files (`--class-names`): one class a line in label order, synonyms split by ';'
(ProxyCLIP's `cls_*.txt` format), e.g. `sky; wall; tree` for one class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .datasets import IGNORE, SampleList, _check_root, _images_in, _listing, open_cityscapes, seg_loader

LAYOUTS = ("coco_object", "cityscapes", "ade20k")

COCO_THINGS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
# ProxyCLIP's words for COCO-Object's background class (configs/cls_coco_object.txt, first line)
COCO_BACKGROUND = ("sky", "wall", "tree", "wood", "grass", "road", "sea", "river", "mountain", "sands", "desk", "bed",
                   "building", "cloud", "floor", "hill", "rail")
COCO_OBJECT_CLASSES: tuple[tuple[str, ...], ...] = (COCO_BACKGROUND, *((name,) for name in COCO_THINGS))
# ProxyCLIP's (and SCLIP's) cls_city_scapes.txt / cls_ade20k.txt: mmseg's class names, spaces removed
CITYSCAPES_CLASSES_PROXYCLIP = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "trafficlight", "trafficsign", "vegetation", "terrain", "sky",
    "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chestofdrawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pooltable", "pillow", "screendoor", "stairway", "river", "bridge", "bookcase",
    "blind", "coffeetable", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchenisland", "computer", "swivelchair", "boat", "bar", "arcademachine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "televisionreceiver", "airplane",
    "dirttrack", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyerbelt", "canopy", "washer", "plaything", "swimmingpool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "tradename", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "trafficlight", "tray", "ashcan", "fan", "pier", "crtscreen", "plate", "monitor",
    "bulletinboard", "shower", "radiator", "glass", "clock", "flag",
)


def read_class_names(path: str | Path) -> list[tuple[str, ...]]:
    """A class-name file (module doc) -> one tuple of synonyms per class, in label order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"class-name file {path} does not exist; give a text file with one class a line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read class-name file {path} ({type(exc).__name__}); give a UTF-8 text file") from None
    classes = [tuple(w.strip() for w in line.split(";") if w.strip()) for line in lines if line.strip()]
    if not classes:
        raise InputError(f"class-name file {path} is empty; write one class a line (synonyms split by ';')")
    return classes


def _pairs(root: Path, img_dir: Path, ann_dir: Path, suffix: str, what: str) -> list[tuple[Path, Path]]:
    missing = [f"{d.relative_to(root)}/" for d in (img_dir, ann_dir) if not d.is_dir()]
    if missing:
        raise InputError(f"{root} is not a {what} folder: missing {' and '.join(missing)}; found: {_listing(root)}")
    pairs = []
    for img in _images_in(img_dir):
        label = ann_dir / f"{img.stem}{suffix}"
        if not label.is_file():
            raise InputError(f"no label map for {img.name}: expected {label}; every image needs one")
        pairs.append((img, label))
    if not pairs:
        raise InputError(f"no images in {img_dir}; the {what} validation split is empty")
    return pairs


def open_coco_object(root: str | Path) -> SampleList:
    """COCO-Object val2017 (module doc): 81 classes, 0 = background."""
    root = _check_root(root)
    pairs = _pairs(root, root / "images" / "val2017", root / "annotations" / "val2017", "_instanceTrainIds.png", "COCO-Object")
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[:81] = np.arange(81)
    return SampleList("coco_object-val", pairs, seg_loader(lut), {"num_classes": 81, "class_names": list(COCO_OBJECT_CLASSES),
                                                               "background": True, "task": "ovseg"})


def open_ade20k(root: str | Path) -> SampleList:
    """ADE20K SceneParsing validation (module doc): 150 classes, label 0 ignored."""
    root = _check_root(root)
    base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() and not (root / "images").is_dir() else root
    pairs = _pairs(base, base / "images" / "validation", base / "annotations" / "validation", ".png", "ADE20K")
    lut = np.full(256, IGNORE, dtype=np.uint8)
    lut[1:151] = np.arange(150)
    return SampleList("ade20k-val", pairs, seg_loader(lut), {"num_classes": 150, "class_names": [(n,) for n in ADE20K_CLASSES],
                                                          "background": False, "task": "ovseg"})


def open_cityscapes_val(root: str | Path) -> SampleList:
    data = open_cityscapes(root, "val")
    return SampleList(data.name, data.items, data.loader, {**data.meta, "class_names": [(n,) for n in CITYSCAPES_CLASSES_PROXYCLIP],
                                                           "background": False, "task": "ovseg"})


def detect_layout(root: Path) -> str:
    if (root / "annotations" / "val2017").is_dir():
        return "coco_object"
    if (root / "leftImg8bit").is_dir() or (root / "gtFine").is_dir():
        return "cityscapes"
    if (root / "annotations" / "validation").is_dir() or (root / "ADEChallengeData2016").is_dir():
        return "ade20k"
    raise InputError(
        f"{root} is not an ovseg dataset: COCO-Object needs images/val2017/ and annotations/val2017/*_instanceTrainIds.png, "
        f"Cityscapes leftImg8bit/val/ and gtFine/val/, ADE20K images/validation/ and annotations/validation/; "
        f"found: {_listing(root)}; or pass --layout"
    )


def open_ovseg(root: str | Path, layout: str = "auto", class_names: str | Path | None = None) -> SampleList:
    """The validation split of `layout` (detected when "auto"), with its class names in
    meta["class_names"] (tuples of synonyms): from `class_names` if given, else ProxyCLIP's list."""
    from ..errors import check_choice

    root = _check_root(root)
    check_choice("ovseg data layout", layout, ("auto", *LAYOUTS))
    layout = detect_layout(root) if layout == "auto" else layout
    data = {"coco_object": open_coco_object, "cityscapes": open_cityscapes_val, "ade20k": open_ade20k}[layout](root)
    data.meta["layout"] = layout
    if class_names is not None:
        names = read_class_names(class_names)
        if len(names) != data.meta["num_classes"]:
            raise InputError(f"class-name file {class_names} lists {len(names)} classes but {layout} has "
                             f"{data.meta['num_classes']}; give one line per class, in label order")
        data.meta["class_names"] = names
    return data


__all__ = ["ADE20K_CLASSES", "CITYSCAPES_CLASSES_PROXYCLIP", "COCO_BACKGROUND", "COCO_OBJECT_CLASSES", "COCO_THINGS", "LAYOUTS", "detect_layout", "open_ade20k",
           "open_coco_object", "open_cityscapes_val", "open_ovseg", "read_class_names"]
