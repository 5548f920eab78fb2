"""The interactive probe: the ViT's patch-bias hook, the dataset readers in their public
layouts, the head (training, checkpoints) and `loftup eval --probe interactive` end to end,
with ONNX engine parity - all on tiny synthetic data written here."""

import json

import numpy as np
import pytest
import torch
from cli_support import assert_one_line_error, run
from interactive_fixtures import tiny_vit, write_berkeley, write_davis, write_grabcut, write_sbd

from loftup.errors import CheckpointError, ConfigError, InputError
from loftup.eval import clicks as C
from loftup.eval import interactive as I
from loftup.eval.interactive_data import open_interactive, sbd_eval_objects

FAST = ["--backbone", "tiny_vit", "--size", "32", "--epochs", "2", "--lr", "1e-3", "--batch-size", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("interactive")
    return {"sbd": write_sbd(root / "SBD"), "grabcut": write_grabcut(root / "GrabCut"), "berkeley": write_berkeley(root / "Berkeley"),
            "davis": write_davis(root / "DAVIS")}


# ----------------------------------------------------------------------------------------
# the ViT hook


def test_patch_bias_is_added_to_the_patch_tokens_only_when_given():
    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 48)
    plain = vit(x)
    assert torch.equal(vit(x, patch_bias=None), plain)
    assert torch.equal(vit(x, patch_bias=torch.zeros(2, 16, 8, 12)), plain)  # a zero bias changes nothing
    bias = torch.randn(2, 16, 8, 12)
    out = vit(x, patch_bias=bias)
    assert not torch.allclose(out, plain)
    assert torch.equal(out, vit(x, patch_bias=bias.flatten(2).transpose(1, 2)))  # (B, C, h, w) == (B, N, C)
    # the same sum by hand: a bias that equals a shift of the patch-embedding conv's output
    shifted = tiny_vit().eval()
    with torch.no_grad():
        shifted.patch_embed.proj.bias += 0.5
    assert torch.allclose(shifted(x), vit(x, patch_bias=torch.full((2, 16, 8, 12), 0.5)), atol=1e-6)
    with pytest.raises(InputError, match="patch_bias of shape"):
        vit(x, patch_bias=torch.zeros(2, 16, 8, 8))


def test_backbone_without_the_hook_is_refused():
    with pytest.raises(ConfigError, match="no hook to add a click embedding"):
        I.patch_bias_model(torch.nn.Conv2d(3, 4, 4))


# ----------------------------------------------------------------------------------------
# datasets


def test_readers_in_each_public_layout(data):
    gc = open_interactive(data["grabcut"])
    s = gc[0]
    assert gc.meta["layout"] == "grabcut" and len(gc) == 3 and s["image"].shape == (32, 40, 3)
    assert set(np.unique(s["mask"])) == {0, 1, C.IGNORE}  # 128 -> the ignored band
    assert open_interactive(data["berkeley"]).meta["layout"] == "berkeley"
    dv = open_interactive(data["davis"])
    assert dv.meta["layout"] == "davis" and set(np.unique(dv[0]["mask"])) == {0, 1}
    sbd = open_interactive(data["sbd"], split="train")
    inst = sbd[0]["instances"]
    assert len(sbd) == 8 and set(np.unique(inst)) == {0, 1, 2}  # the speck (< 80 px) and the diagonal (< 8% of its box) are gone
    assert open_interactive(data["sbd"], "sbd", split="val").meta["split"] == "val" and len(open_interactive(data["sbd"], split="val")) == 2


def test_a_dataset_in_the_wrong_layout(data, tmp_path):
    with pytest.raises(InputError, match=r"is not a grabcut dataset: expected data_GT/ \+ boundary_GT/"):
        open_interactive(data["davis"], "grabcut")
    with pytest.raises(InputError, match="is not an SBD dataset"):
        open_interactive(data["grabcut"], "sbd")
    (tmp_path / "photos").mkdir()
    with pytest.raises(InputError, match="in no interactive-segmentation layout"):
        open_interactive(tmp_path)
    broken = write_grabcut(tmp_path / "broken", n=2)
    next((broken / "boundary_GT").iterdir()).unlink()
    with pytest.raises(InputError, match="have no mask"):
        open_interactive(broken)


# ----------------------------------------------------------------------------------------
# the head


def _bilinear_setup(seed=0):
    from loftup.eval.upsamplers import BackboneRunner, make_baseline

    runner = I.PromptedRunner(BackboneRunner(tiny_vit().eval().requires_grad_(False)))
    src = make_baseline("bilinear", runner)
    return runner, src


def test_a_few_training_steps_beat_chance_on_squares(data):
    """Trained ~40 steps on the synthetic squares, the decoder beats the trivial all-object
    prediction and its own untrained state at IoU after one click."""
    runner, src = _bilinear_setup()
    val = open_interactive(data["sbd"], split="val")
    cfg = I.interactive_config(size=32, epochs=10, batch_size=2, lr=3e-3, next_clicks=1, max_clicks=1, plot_samples=0)
    torch.manual_seed(0)
    untrained = I.ClickHead(16, 4, cfg.hidden_dim)
    before = I.evaluate_interactive({"bilinear": src}, {"bilinear": untrained}, runner, val, cfg).metrics["bilinear"]
    head = I.train_click_head(src, runner, open_interactive(data["sbd"], split="train"), cfg)
    after = I.evaluate_interactive({"bilinear": src}, {"bilinear": head}, runner, val, cfg).metrics["bilinear"]
    objects = [o for i in range(len(val)) for o in sbd_eval_objects(val[i])]
    chance = np.mean([C.iou(o["mask"], np.ones_like(o["mask"], bool)) for o in objects])  # all pixels called object
    assert after["objects"] == before["objects"] == 4
    print(f"IoU@1: trained {after['iou@1']:.3f}, untrained {before['iou@1']:.3f}, all-object {chance:.3f}")
    assert after["iou@1"] > max(chance, before["iou@1"]) + 0.2, (after, before, chance)


def test_the_encoder_learns_through_the_frozen_backbone(data):
    """Gradients reach the click encoder through the ViT's blocks; the backbone stays frozen."""
    runner, src = _bilinear_setup()
    head = I.ClickHead(16, 4, 8)
    image = torch.randn(2, 3, 32, 32)
    maps = I.build_maps([[C.Click(5, 5, True)], [C.Click(20, 20, True)]], np.zeros((2, 32, 32), np.float32), 5)
    logits, _ = I.predict(src, runner, head, image, maps, grad=True)
    logits.sum().backward()
    assert head.encoder.proj.weight.grad is not None and head.encoder.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in runner.backbone.parameters())
    with torch.no_grad():
        again, _ = I.predict(src, runner, head, image, maps)  # the memoised no-grad path gives the same numbers
    assert torch.allclose(again, logits.detach(), atol=1e-6)


def test_head_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    head = I.ClickHead(16, 4, 8).eval()
    path = I.save_click_head(head, tmp_path / "h.safetensors", {"trained_on": "reference"})
    back = I.load_click_head(path, 16, 4)
    assert back.meta["trained_on"] == "reference"
    for (k, a), (k2, b) in zip(head.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with pytest.raises(CheckpointError, match="trained for embed_dim 16 but the backbone has 384"):
        I.load_click_head(path, 384, 4)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not an interactive-probe head"):
        I.load_click_head(tmp_path / "other.safetensors")


# ----------------------------------------------------------------------------------------
# `loftup eval --probe interactive`


@pytest.fixture(scope="module")
def tiny_vit_ckpt(tmp_path_factory):
    from loftup.model import LoftUp, LoftUpConfig, save_checkpoint

    torch.manual_seed(0)
    model = LoftUp(LoftUpConfig(feat_dim=16, backbone="tiny_vit")).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("vitckpt") / "tinyvit16.safetensors")


@pytest.fixture(scope="module")
def vit_onnx_engine(tiny_vit_ckpt):
    export = pytest.importorskip("loftup.export.onnx")
    from loftup.model import load_checkpoint

    path = tiny_vit_ckpt.parent / "tinyvit16.onnx"  # next to its reference: found from the metadata
    if not path.exists():
        export.export_onnx(load_checkpoint(tiny_vit_ckpt), path, scope="upsampler", sizes=(16, 32, 64), max_batch=8,
                           source=tiny_vit_ckpt, patch_size=4)
    return path


@pytest.mark.export
def test_onnx_engine_vs_reference_on_the_interactive_probe(tmp_path, capsys, data, vit_onnx_engine):
    out = tmp_path / "out"
    code, stdout, err = run(["eval", "--engine", vit_onnx_engine, "--probe", "interactive", "--data", data["grabcut"],
                             "--train-data", data["sbd"], *FAST, "--out", out], capsys)
    assert code == 0, err
    assert "parity PASS" in stdout and "| reference" in stdout and "IoU@1 %" in stdout
    res = json.loads((out / "results.json").read_text())
    parity = res["parity"]
    assert parity["probe"] == "interactive" and parity["primary_metric"] == "iou@1" and parity["passed"] is True
    assert set(parity["reference"]) >= {"iou@1", "noc@85", "noc@90", "nof@85", "nof@90", "objects"}
    assert parity["reference"]["objects"] == parity["engine"]["objects"] == 3
    assert abs(parity["delta"]["iou@1"]) <= parity["tolerance"]["atol"] + parity["tolerance"]["rtol"] * parity["reference"]["iou@1"]
    fp = parity["feature_parity"]
    assert fp["batches"] == 3 and fp["min_cos"] > 0.999 and fp["max_abs"] < 1e-2  # one per object, at the first click
    # the decoder's probabilities after the first click agree too, and they are not a constant map
    assert fp["prob_max_abs"] < 1e-3 and all(b["prob_std"] > 1e-3 for b in parity["feature_parity_per_batch"])
    assert res["heads_trained_on"] == {"reference": "reference", "engine": "reference"}
    head = out / "interactive_head_reference.safetensors"
    assert res["head_files"] == {"reference": str(head)} and head.is_file()
    # the saved head is reusable: the same reference numbers without training
    out2 = tmp_path / "out2"
    code, stdout, err = run(["eval", "--engine", vit_onnx_engine, "--probe", "interactive", "--data", data["grabcut"],
                             "--head", head, "--backbone", "tiny_vit", "--size", "32", "--out", out2], capsys)
    assert code == 0, err
    res2 = json.loads((out2 / "results.json").read_text())
    assert res2["metrics"]["reference"] == res["metrics"]["reference"] and "training" not in err


def test_checkpoint_with_baselines_and_plot_on_davis(tmp_path, capsys, data, tiny_vit_ckpt):
    out = tmp_path / "out"
    code, stdout, err = run(["eval", "--checkpoint", tiny_vit_ckpt, "--probe", "interactive", "--data", data["davis"],
                             "--layout", "davis", "--train-data", data["sbd"], *FAST, "--epochs", "1", "--baselines", "lowres",
                             "--set", "max_clicks=3", "--out", out, "--plot"], capsys)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert set(res["metrics"]) == {"loftup", "lowres"} and res["dataset"] == "davis" and res["config"]["max_clicks"] == 3
    assert all(m["objects"] == 3 and 1 <= m["noc@90"] <= 3 for m in res["metrics"].values())
    assert (out / "interactive_predictions.png").stat().st_size > 1000
    assert (out / "interactive_head_loftup.safetensors").is_file() and (out / "interactive_head_lowres.safetensors").is_file()


@pytest.mark.parametrize("extra, needles", [
    ([], ("--train-data SBD_DIR", "--head")),
    (["--train-data", "SBD", "--layout", "grabcut", "--data", "DAVIS"], ("is not a grabcut dataset",)),
    (["--head", "missing.safetensors"], ("--head missing.safetensors does not exist",)),
    (["--train-data", "SBD", "--backbone", "tiny_conv"], ("no hook to add a click embedding",)),
])
def test_bad_input_is_one_line(extra, needles, tmp_path, capsys, data):
    import eval_fixtures  # noqa: F401 - registers tiny_conv

    args = ["eval", "--probe", "interactive", "--random-init", "--size", "32", "--out", tmp_path / "o"]
    repl = {"SBD": str(data["sbd"]), "DAVIS": str(data["davis"])}
    extra = [repl.get(a, a) for a in extra]
    if "--data" not in extra:
        extra += ["--data", str(data["grabcut"])]
    if "--backbone" not in extra:
        extra += ["--backbone", "tiny_vit"]
    code, _, err = run(args + extra, capsys)
    assert_one_line_error(code, err, *needles, only_line=False)
    assert not (tmp_path / "o" / "results.json").exists()


def test_a_pipeline_engine_is_refused_before_any_work(tmp_path):
    """A pipeline engine runs its own backbone, which cannot take the click embedding."""
    from types import SimpleNamespace

    plan = SimpleNamespace(handle=SimpleNamespace(scope="pipeline", path=tmp_path / "p.onnx"), sources={}, runner=None)
    with pytest.raises(ConfigError, match="pipeline engine: its backbone cannot take the click embedding; export it with --scope upsampler"):
        I.run(SimpleNamespace(plot=False), plan, I.interactive_config(), (None, None, None), tmp_path, 1e-3, 1e-2, print)
    assert not list(tmp_path.iterdir())
