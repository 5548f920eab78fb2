"""scripts/collect_photos.py: the Qt resource reader behind `--extended`, and its refusals."""

import io
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from train_helpers import load_script


def make_rcc(tree: dict, version: int = 3, compress: tuple = ()) -> bytes:
    """A Qt resource file holding `tree` ({name: bytes or a sub-dict}); files named in
    `compress` stored zlib-compressed. Nodes are laid out breadth-first, so each folder's
    children sit together, as rcc writes them."""
    names, data, nodes = bytearray(), bytearray(), []

    def name_off(name: str) -> int:
        off = len(names)
        names.extend(struct.pack(">HI", len(name), 0) + name.encode("utf-16-be"))
        return off

    nodes.append(("", tree))  # the root
    children = {}  # id(folder) -> (its first child's index, how many)
    queue = [tree]
    while queue:
        folder = queue.pop(0)
        children[id(folder)] = (len(nodes), len(folder))
        for name, item in folder.items():
            nodes.append((name, item))
            if isinstance(item, dict):
                queue.append(item)
    node_size = 14 if version == 1 else 22
    packed = bytearray()
    for i, (name, item) in enumerate(nodes):
        noff = name_off(name) if i else 0
        if isinstance(item, dict):
            first, count = children[id(item)]
            packed.extend(struct.pack(">IHII", noff, 2, count, first))
        else:
            body = item
            flags = 0
            if name in compress:
                body, flags = struct.pack(">I", len(item)) + zlib.compress(item), 1
            packed.extend(struct.pack(">IHHHI", noff, flags, 0, 0, len(data)))
            data.extend(struct.pack(">I", len(body)) + body)
        if node_size == 22:
            packed.extend(b"\0" * 8)
    head = 20 if version < 3 else 24
    data_off, names_off = head, head + len(data)
    tree_off = names_off + len(names)
    header = b"qres" + struct.pack(">4I", version, tree_off, data_off, names_off)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + bytes(data) + bytes(names) + bytes(packed)


def make_deb(files: dict) -> bytes:
    """A minimal .deb (an ar archive with data.tar) holding `files` ({path under usr/share/: bytes})."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, body in files.items():
            info = tarfile.TarInfo(f"./usr/share/{path}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    out = bytearray(b"!<arch>\n")
    for name, body in (("debian-binary", b"2.0\n"), ("data.tar", buf.getvalue())):
        out.extend(f"{name:<16}{0:<12}{0:<6}{0:<6}{644:<8}{len(body):<10}`\n".encode() + body)
        if len(body) % 2:
            out.extend(b"\n")
    return bytes(out)


def webp(w: int, h: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


@pytest.mark.parametrize("version", [1, 3])
def test_qt_resources_reads_nested_and_compressed_files(version):
    collect = load_script("collect_photos")
    text = b"hello " * 50
    rcc = make_rcc({"act": {"resource": {"a.webp": b"RIFF-raw-bytes", "notes.txt": text}, "Main.qml": b"qml"}},
                   version=version, compress=("notes.txt",))
    assert collect.qt_resources(rcc) == {"act/resource/a.webp": b"RIFF-raw-bytes", "act/resource/notes.txt": text,
                                         "act/Main.qml": b"qml"}


def test_qt_resources_refuses_other_files():
    collect = load_script("collect_photos")
    with pytest.raises(ValueError, match="not a Qt resource file"):
        collect.qt_resources(b"PK\x03\x04 a zip, not an rcc")


def test_gcompris_photos_keeps_large_webps_under_resource_and_checks_the_count(tmp_path, monkeypatch):
    collect = load_script("collect_photos")
    photo, thumb = webp(320, 300, 0), webp(320, 200, 1)
    rcc = make_rcc({"gcompris": {"src": {"activities": {"erase": {
        "resource": {"kingfisher.webp": photo, "icon.webp": thumb}, "erase.webp": webp(400, 400, 2)}}}}})
    deb = tmp_path / "gcompris-qt-data_3.1-2_all.deb"
    deb.write_bytes(make_deb({"gcompris-qt/rcc/erase.rcc": rcc}))

    monkeypatch.setattr(collect, "GCOMPRIS", ("gcompris-qt-data", "3.1-2", {"erase": 1}))
    photos = collect.gcompris_photos(deb)
    assert photos == {"gcompris/src/activities/erase/resource/kingfisher.webp": photo}
    assert collect.out_name("gcompris-qt-data", next(iter(photos))) == "gcompris_erase_kingfisher"

    monkeypatch.setattr(collect, "GCOMPRIS", ("gcompris-qt-data", "3.1-2", {"erase": 2}))
    with pytest.raises(SystemExit, match="erase holds 1 photos, not 2"):
        collect.gcompris_photos(deb)


def test_extended_sources_get_distinct_names():
    collect = load_script("collect_photos")
    names = [collect.out_name(pkg, p) for pkg, _, paths in collect.DEBIAN + collect.DEBIAN_EXTENDED for p in paths]
    assert len(set(names)) == len(names)
    assert "lomiri_Kleiber" in names and "palapeli_citrus-fruits" in names
    assert collect.out_name("gcompris-qt-data", "gcompris/src/activities/explore_monuments/resource/france/"
                            "eiffelTower.webp") == "gcompris_monuments_eiffelTower"


def test_hold_out_leaves_out_the_scored_photos_and_only_those(tmp_path, monkeypatch):
    """collect() on stand-in packages (every file a small PNG): --hold-out writes the base pool less
    the 26 HELD_OUT photos, which all name photos of that pool."""
    import zipfile

    collect = load_script("collect_photos")
    png = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 10)).save(png, format="PNG")
    monkeypatch.setattr(collect, "fetch_debs", lambda work, pkgs: {p: work / f"{p}.deb" for p, _, _ in pkgs})
    monkeypatch.setattr(collect, "deb_members", lambda deb, wanted: {w: png.getvalue() for w in wanted})

    def pip_download(cmd, **kwargs):  # the scikit-learn wheel, holding its two photos
        with zipfile.ZipFile(tmp_path / "work" / "scikit_learn-1.9.1-x.whl", "w") as z:
            for m in collect.SKLEARN[1]:
                z.writestr(m, png.getvalue())

    monkeypatch.setattr(collect.subprocess, "run", pip_download)
    written = {}
    for hold_out in (False, True):
        (tmp_path / "work").mkdir()
        out = tmp_path / f"out{hold_out}"
        out.mkdir()
        rows = collect.collect(out, tmp_path / "work", hold_out=hold_out)
        written[hold_out] = {p.stem for p in out.glob("*.png")}
        assert sorted(r["file"] for r in rows) == sorted(f"{n}.png" for n in written[hold_out])  # the manifest's rows
        for f in (tmp_path / "work").iterdir():
            f.unlink()
        (tmp_path / "work").rmdir()
    assert len(written[False]) == 81 and len(collect.HELD_OUT) == 26
    assert written[True] == written[False] - set(collect.HELD_OUT) and set(collect.HELD_OUT) <= written[False]
