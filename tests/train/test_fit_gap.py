"""scripts/fit_gap.py: checkpoints' and bilinear's error to the stage-1 target, on the photos a
run saw and on the rest, with a feature cache that is reused and a clear error for a file that
lists no photos."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from train_helpers import TinyBackbone, load_script, write_photos

from loftup.backbones import register_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


def _script():
    return load_script("fit_gap")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from loftup.model import load_or_init, save_checkpoint

    register_backbone("tiny_fitgap_bb", lambda weights: TinyBackbone(16, 8))
    root = tmp_path_factory.mktemp("fitgap")
    files = write_photos(root / "photos", n=4, side=64)
    seen = sorted(p.name for p in files)[:3]
    models = [load_or_init(None, random_init=True, feat_dim=16, seed=s) for s in (0, 1)]
    ckpts = [save_checkpoint(m, root / f"m{i}.safetensors", {"photos": seen}) for i, m in enumerate(models)]
    return root, files, seen, models, ckpts


def test_rows_split_the_photos_and_bilinear_is_the_resized_low_res_grid(setup, monkeypatch):
    from loftup.model import save_checkpoint

    root, files, seen, models, ckpts = setup
    mod = _script()
    args = [*map(str, ckpts), "--photos", str(root / "photos"), "--seen", str(ckpts[0]), "--size", "64",
            "--backbone", "tiny_fitgap_bb", "--weights", "random", "--threads", "1", "--json", str(root / "t.json")]
    assert mod.main(args) == 0
    rows = json.loads((root / "t.json").read_text())
    assert [r["source"] for r in rows] == list(map(str, ckpts))
    assert all((r["seen"]["photos"], r["unseen"]["photos"]) == (3, 1) for r in rows)

    data = torch.load(root / "photos" / "fit_gap_features.pt", weights_only=True)
    assert data["names"] == sorted(p.name for p in files) and data["lr"].shape == (4, 16, 8, 8)
    unseen = data["names"].index(next(n for n in data["names"] if n not in seen))
    model = models[1]
    with torch.no_grad():
        model.channelnorm.norm.weight.mul_(1.5)  # another norm than models[0]'s: each row is in its model's space
        save_checkpoint(model, ckpts[1])
        assert mod.main(args) == 0
        rows = json.loads((root / "t.json").read_text())
        lr, image = data["lr"][unseen : unseen + 1], data["image"][unseen : unseen + 1]
        target = F.interpolate(model.channelnorm(data["hr"][unseen : unseen + 1]), size=(64, 64), mode="bilinear",
                               align_corners=False)
        bilinear = F.interpolate(model.channelnorm(lr), size=(64, 64), mode="bilinear", align_corners=False)
        out = model(lr, image)
    u = rows[1]["unseen"]
    assert u["bilinear_mse"] == pytest.approx(F.mse_loss(bilinear, target).item(), rel=1e-5)
    assert u["mse"] == pytest.approx(F.mse_loss(out, target).item(), rel=1e-4)
    assert u["patch_mean_mse"] == pytest.approx(F.mse_loss(F.avg_pool2d(out, 8), F.avg_pool2d(target, 8)).item(), rel=1e-4)
    assert u["bilinear_patch_mean_mse"] == pytest.approx(
        F.mse_loss(F.avg_pool2d(bilinear, 8), F.avg_pool2d(target, 8)).item(), rel=1e-4)
    assert rows[0]["unseen"]["bilinear_mse"] != pytest.approx(u["bilinear_mse"], rel=1e-3)  # two norms, two spaces
    assert rows[0]["seen"]["mse"] != rows[1]["seen"]["mse"]

    import loftup.backbones as backbones  # a second run reads the cache: no backbone is built

    def refuse(*a, **k):
        raise AssertionError("the feature cache was not reused")

    monkeypatch.setattr(backbones, "create_backbone", refuse)
    assert mod.main(args) == 0
    assert json.loads((root / "t.json").read_text()) == rows


def test_a_seen_file_without_a_photo_list_is_refused(setup, tmp_path):
    from loftup.model import save_checkpoint

    root, _, _, models, ckpts = setup
    bare = save_checkpoint(models[0], tmp_path / "bare.safetensors")
    with pytest.raises(SystemExit, match="records no training photos"):
        _script().main([str(ckpts[0]), "--photos", str(root / "photos"), "--seen", str(bare), "--size", "64",
                        "--backbone", "tiny_fitgap_bb", "--weights", "random"])
