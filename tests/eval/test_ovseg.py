"""`loftup eval --probe ovseg` (ProxyCLIP): proxy attention, windows, classes, readers, end to end, engine parity.

Tiny synthetic datasets are written here in each public layout (COCO-Object, Cityscapes,
ADE20K); images are flat colour tiles, one colour per class, so classes are distinguishable by
construction. CLIP is a random-weight tiny model saved in OpenAI's layout; the proxy backbone is
the tests' tiny conv backbone.
"""

import json

import numpy as np
import pytest
import torch
from cli_support import assert_one_line_error, run
from eval_fixtures import PALETTE, OracleSource, random_layout, save_png, write_cityscapes
from PIL import Image
from safetensors.torch import save_file

from loftup.backbones.clip import CLIPVisionConfig
from loftup.backbones.clip_text import CLIPTextConfig, clip_state_dict, random_clip
from loftup.errors import InputError
from loftup.eval import ovseg as O
from loftup.eval.ovseg_data import open_ovseg, read_class_names

TINY_VISION = CLIPVisionConfig(width=64, layers=2, heads=1, patch_size=8, input_resolution=32, output_dim=32)
TINY_TEXT = CLIPTextConfig(vocab_size=49408, context_length=77, width=64, layers=1, heads=1, output_dim=32)
FAST = ["--backbone", "tiny_conv", "--size", "32", "--set", "slide_crop=16", "--set", "slide_stride=8"]


@pytest.fixture(scope="module")
def tiny_clip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip_state_dict(random_clip(TINY_VISION, TINY_TEXT, seed=0)).items()}, path)
    return path


def write_coco_object(root, n=3, seed=0):
    """COCO-Object val2017: labels 0 (background), 1 (person), 3 (car), 16 (cat); one ignored corner."""
    rng = np.random.default_rng(seed)
    classes = np.array([0, 1, 3, 16])
    for i in range(n):
        lab = random_layout(rng, len(classes))
        ids = classes[lab].astype(np.uint8)
        ids[:4, :4] = 255
        save_png(root / "images" / "val2017" / f"{i:012d}.png", PALETTE[lab + 1])
        save_png(root / "annotations" / "val2017" / f"{i:012d}_instanceTrainIds.png", ids)
    return root


def write_ade20k(root, n=2, seed=0):
    """ADEChallengeData2016 validation: labels 0 (other, ignored) and 1..4."""
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    for i in range(n):
        lab = random_layout(rng, 5)
        save_png(base / "images" / "validation" / f"ADE_val_{i:08d}.png", PALETTE[lab])
        save_png(base / "annotations" / "validation" / f"ADE_val_{i:08d}.png", lab.astype(np.uint8))
    return root


def materialised_proxy_attention(proxy, values, beta, gamma):
    """ProxyCLIP's custom_attn literally: the full HW x HW similarity matrix."""
    q = torch.nn.functional.normalize(proxy.flatten(2), dim=1)
    sim = torch.einsum("bcm,bcn->bmn", q, q)
    sim = (sim - sim.mean(dim=(1, 2), keepdim=True) * beta) * gamma
    sim[sim < 0] = float("-inf")
    return torch.bmm(torch.softmax(sim, dim=-1), values)


# ----------------------------------------------------------------------------------------
# proxy attention


def test_chunked_proxy_attention_equals_the_materialised_one(monkeypatch):
    g = torch.Generator().manual_seed(0)
    B, C, H, W, D = 2, 8, 6, 7, 5
    proxy = torch.randn(B, C, H, W, generator=g) + 0.5  # correlated features: some pairs masked, none fully
    values = torch.randn(B, H * W, D, generator=g)
    expected = materialised_proxy_attention(proxy, values, 1.2, 3.0)
    assert torch.isfinite(expected).all()
    shapes = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda a, b: shapes.append(tuple(real_bmm(a, b).shape)) or real_bmm(a, b))
    out = O.proxy_attention(proxy, values, beta=1.2, gamma=3.0, chunk_mb=9 * B * H * W * 5 / 2**20)  # 5 rows a chunk
    monkeypatch.undo()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    sims = [s for s in shapes if s[-1] == H * W]
    assert sims and max(s[1] for s in sims) == 5 and len(sims) == -(-H * W // 5)  # never (B, HW, HW)
    for beta, gamma in ((0.5, 1.0), (1.0, 10.0)):
        torch.testing.assert_close(O.proxy_attention(proxy, values, beta, gamma, chunk_mb=1e-3),
                                   materialised_proxy_attention(proxy, values, beta, gamma), atol=1e-5, rtol=1e-5)


def test_proxy_attention_keeps_each_pixel_when_its_whole_row_is_masked():
    proxy = torch.ones(1, 4, 3, 3)  # identical features: mean similarity 1, (1 - 1.2) * 3 < 0 everywhere
    values = torch.arange(9 * 2, dtype=torch.float32).view(1, 9, 2)
    assert torch.isnan(materialised_proxy_attention(proxy, values, 1.2, 3.0)).all()  # ProxyCLIP: undefined
    torch.testing.assert_close(O.proxy_attention(proxy, values, 1.2, 3.0), values)  # ours: each pixel itself


def test_proxy_attention_on_one_hot_features_averages_within_a_class():
    labels = torch.tensor([[0, 0, 1], [0, 2, 1], [2, 2, 1]])
    proxy = torch.nn.functional.one_hot(labels, 3).permute(2, 0, 1)[None].float()
    values = torch.randn(1, 9, 4, generator=torch.Generator().manual_seed(1))
    out = O.proxy_attention(proxy, values)
    flat = labels.flatten()
    for k in range(3):
        torch.testing.assert_close(out[0, flat == k], values[0, flat == k].mean(0).expand((flat == k).sum(), 4))


# ----------------------------------------------------------------------------------------
# windows, sizes, classes


def test_sliding_windows_are_proxyclips():
    assert O.windows(336, 448, 336, 112) == [(0, 336, 0, 336), (0, 336, 112, 448)]
    assert O.windows(336, 500, 336, 112) == [(0, 336, 0, 336), (0, 336, 112, 448), (0, 336, 164, 500)]
    assert O.windows(20, 30, 0, 112) == [(0, 20, 0, 30)]
    assert O.windows(20, 30, 336, 112) == [(0, 20, 0, 30)]  # a window larger than the image: the image
    cover = np.zeros((50, 70), int)
    for y1, y2, x1, x2 in O.windows(50, 70, 32, 12):
        assert (y2 - y1, x2 - x1) == (32, 32)
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1


def test_proxy_features_are_eight_times_the_proxy_grid():
    assert O.proxy_out_size(336, 336, 14, 336, 8) == (192, 192)  # DINOv2-S/14 at 336: 24 -> 192
    assert O.proxy_out_size(336, 448, 14, 336, 8) == (192, 256)


def test_classify_takes_synonyms_max_and_the_background_threshold():
    pc = O.ProxyCLIP.__new__(O.ProxyCLIP)
    pc.cfg, pc.num_classes = O.OvsegConfig(logit_scale=1.0), 3
    pc.queries = ["sky", "wall", "person", "cat"]  # class 0 = {sky, wall}, 1 = person, 2 = cat
    pc.query_class = torch.tensor([0, 0, 1, 2])
    probs = torch.tensor([[0.1, 0.5, 0.1, 0.05],  # rows: queries, columns: 4 pixels (softmax = these)
                          [0.2, 0.1, 0.2, 0.4],
                          [0.6, 0.3, 0.2, 0.3],
                          [0.1, 0.1, 0.5, 0.25]])
    logits = torch.log(probs).view(4, 1, 4)
    assert pc.classify(logits, 0.0).flatten().tolist() == [1, 0, 2, 0]  # pixel 3: 'wall' 0.4 beats 'person' 0.3
    assert pc.classify(logits, 0.55).flatten().tolist() == [1, 0, 0, 0]  # best prob 0.5 < 0.55 -> background


# ----------------------------------------------------------------------------------------
# readers


def test_readers_for_the_three_layouts(tmp_path):
    coco = open_ovseg(write_coco_object(tmp_path / "coco"), "auto")
    assert coco.meta["layout"] == "coco_object" and coco.meta["num_classes"] == 81 and len(coco) == 3
    assert coco.meta["class_names"][0][:3] == ("sky", "wall", "tree") and coco.meta["class_names"][16] == ("cat",)
    assert set(np.unique(coco[0]["label"])) <= {0, 1, 3, 16, 255} and (coco[0]["label"][:4, :4] == 255).all()
    city = open_ovseg(write_cityscapes(tmp_path / "city"), "auto")
    assert city.meta["layout"] == "cityscapes" and len(city) == 2 and city.meta["class_names"][13] == ("car",)
    assert city.meta["class_names"][6] == ("trafficlight",)  # ProxyCLIP's list: mmseg names without spaces
    ade = open_ovseg(write_ade20k(tmp_path / "ade"), "auto")
    assert ade.meta["layout"] == "ade20k" and ade.meta["num_classes"] == 150 and len(ade) == 2
    assert ade.meta["class_names"][0] == ("wall",) and ade.meta["class_names"][149] == ("flag",)
    assert len(ade.meta["class_names"]) == 150 and ade.meta["class_names"][44] == ("chestofdrawers",)
    raw = np.asarray(Image.open(ade.items[0][1]))
    assert (ade[0]["label"][raw == 0] == 255).all() and (ade[0]["label"][raw == 3] == 2).all()  # reduce_zero_label


def test_class_name_files(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("sky; wall\n\nperson\n  cat  \n")
    assert read_class_names(names) == [("sky", "wall"), ("person",), ("cat",)]
    root = write_ade20k(tmp_path / "ade")
    with pytest.raises(InputError, match="class-name file .*missing.txt does not exist"):
        open_ovseg(root, "ade20k", tmp_path / "missing.txt")
    with pytest.raises(InputError, match="lists 3 classes but ade20k has 150"):
        open_ovseg(root, "ade20k", names)
    names.write_text("".join(f"c{k}\n" for k in range(150)))
    assert open_ovseg(root, "ade20k", names).meta["class_names"][149] == ("c149",)


# ----------------------------------------------------------------------------------------
# the pipeline


def _sources(names=("bilinear", "lowres")):
    from loftup.backbones import create_backbone
    from loftup.eval.upsamplers import BackboneRunner, make_baseline

    runner = BackboneRunner(create_backbone("tiny_conv"), 16)
    return {n: make_baseline(n, runner) for n in names}


def _hand_miou(preds, labels, num_classes):
    ious = []
    for k in range(num_classes):
        tp = fp = fn = 0
        for pred, label in zip(preds, labels):
            keep = label != 255
            tp += int(((pred == k) & (label == k) & keep).sum())
            fp += int(((pred == k) & (label != k) & keep).sum())
            fn += int(((pred != k) & (label == k)).sum())
        if tp + fp + fn:
            ious.append(tp / (tp + fp + fn))
    return sum(ious) / len(ious), len(ious)


def test_pipeline_metrics_equal_a_hand_count(tmp_path, tiny_clip_file):
    from loftup.backbones.clip_text import load_clip

    data = open_ovseg(write_coco_object(tmp_path / "coco"), "coco_object")
    cfg = O.OvsegConfig(size=32, slide_crop=16, slide_stride=8, plot_samples=10, prob_thd=0.02)
    pc = O.ProxyCLIP(load_clip(tiny_clip_file), data.meta["class_names"], cfg)
    assert pc.text.shape == (97, 32) and torch.allclose(pc.text.norm(dim=-1), torch.ones(97))  # 80 things + 17 bg words
    result = O.evaluate_ovseg(pc, _sources(), data)
    labels = [data[i]["label"] for i in range(len(data))]
    for name in ("bilinear", "lowres"):
        preds = [s["pred"][name] for s in result.samples]
        assert len(preds) == 3 and preds[0].shape == (32, 32)
        miou, present = _hand_miou(preds, labels, 81)
        assert result.metrics[name]["miou"] == pytest.approx(miou, abs=1e-12)
        assert result.metrics[name]["classes_present"] == present and result.metrics[name]["images"] == 3


def test_one_hot_proxy_features_give_one_class_per_region(tmp_path, tiny_clip_file):
    """With 'perfect' proxy features (the fixture colours, one-hot) every pixel attends exactly to
    its own class region, so the prediction is constant on each ground-truth region - whatever
    the (random) CLIP says about the region."""
    from loftup.backbones.clip_text import load_clip

    data = open_ovseg(write_cityscapes(tmp_path / "city"), "cityscapes")
    cfg = O.OvsegConfig(size=32, slide_crop=0, plot_samples=10)
    pc = O.ProxyCLIP(load_clip(tiny_clip_file), data.meta["class_names"], cfg)
    oracle = OracleSource()
    oracle.runner = _sources(("bilinear",))["bilinear"].runner
    result = O.evaluate_ovseg(pc, {"oracle": oracle}, data)
    for i, sample in enumerate(result.samples):
        colours = data[i]["image"]
        pred = sample["pred"]["oracle"]
        for colour in np.unique(colours.reshape(-1, 3), axis=0):
            region = (colours == colour).all(-1)
            assert len(np.unique(pred[region])) == 1


def test_a_clip_built_to_know_the_colours_scores_perfectly(tmp_path, tiny_clip_file):
    """Classes distinguishable by construction: with one-hot proxy features each colour region
    pools to one CLIP feature; CLIP's `proj` is then solved so that each region's feature lands
    on its class name's text embedding. The whole chain (prompts, class order, label ids,
    windows, resizing, classification, metric) must then score every pixel right."""
    from eval_fixtures import CITY_TRAIN

    from loftup.backbones.clip_text import load_clip
    from loftup.pipeline import CLIP_MEAN, CLIP_STD

    data = open_ovseg(write_cityscapes(tmp_path / "city"), "cityscapes")
    clip = load_clip(tiny_clip_file)
    cfg = O.OvsegConfig(size=32, slide_crop=0)
    pc = O.ProxyCLIP(clip, data.meta["class_names"], cfg)
    oracle = OracleSource()
    oracle.runner = _sources(("bilinear",))["bilinear"].runner
    visual, rows, targets = clip.visual, [], []
    for i in range(len(data)):
        image01 = torch.from_numpy(np.array(data[i]["image"])).permute(2, 0, 1)[None].float() / 255
        values = pc.values(O._normalise(image01, CLIP_MEAN, CLIP_STD))
        proxy = oracle.features(O._normalise(image01, oracle.mean, oracle.std), (64, 64))
        v = torch.nn.functional.interpolate(values, size=(64, 64), mode="bilinear", align_corners=False)
        u = visual.ln_post(visual.transformer.resblocks[-1].attn.out_proj(O.proxy_attention(proxy, v.flatten(2).transpose(1, 2))))[0]
        colour = proxy[0].argmax(0).flatten()
        for c in colour.unique().tolist():
            rows.append(u[colour == c][0])  # one feature per region: every member attends to the same pixels
            targets.append(pc.text[CITY_TRAIN[c - 1]])
    with torch.no_grad():
        visual.proj.copy_(torch.linalg.lstsq(torch.stack(rows), torch.stack(targets)).solution)
    result = O.evaluate_ovseg(pc, {"oracle": oracle}, data)
    assert result.metrics["oracle"]["miou"] == 1.0 and result.metrics["oracle"]["pixel_acc"] == 1.0
    assert result.metrics["oracle"]["classes_present"] == 4


def test_sources_on_one_runner_share_one_backbone_pass_per_window(tiny_clip_file):
    from loftup.backbones.clip_text import load_clip

    sources = _sources(("bilinear", "lowres", "nearest"))
    backbone = sources["bilinear"].runner.backbone
    calls = []
    handle = backbone.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    cfg = O.OvsegConfig(size=32, slide_crop=16, slide_stride=8)
    pc = O.ProxyCLIP(load_clip(tiny_clip_file), [("red",), ("green",)], cfg)
    preds, _ = O.predict_image(pc, sources, torch.rand(1, 3, 32, 32), (40, 40), 0.0)
    handle.remove()
    assert calls == [(1, 3, 16, 16)] * 9  # 9 windows, one proxy-backbone pass each for three sources
    assert all(p.shape == (40, 40) and set(p.unique().tolist()) <= {0, 1} for p in preds.values())


# ----------------------------------------------------------------------------------------
# `loftup eval --probe ovseg`


def test_cli_end_to_end_with_baselines_and_plot(tmp_path, capsys, tiny_clip_file):
    city = write_cityscapes(tmp_path / "city")
    out = tmp_path / "out"
    code, stdout, err = run(["eval", "--probe", "ovseg", "--data", city, "--clip", tiny_clip_file, "--random-init", *FAST,
                             "--baselines", "bilinear,lowres", "--plot", "--out", out], capsys)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert set(res["metrics"]) == {"loftup-random", "bilinear", "lowres"}
    for m in res["metrics"].values():
        assert 0 <= m["miou"] <= 1 and m["images"] == 2 and len(m["per_class_iou"]) == 19
    assert res["dataset"]["layout"] == "cityscapes" and res["config"]["input_size"] == 16 and res["config"]["proxy_scale"] == 8
    assert "| loftup-random" in stdout and "mIoU %" in stdout
    assert (out / "ovseg_predictions.png").stat().st_size > 1000 and (out / "results.md").is_file()


@pytest.fixture(scope="module")
def ovseg_onnx_engine(tmp_path_factory, tiny_ckpt):
    export = pytest.importorskip("loftup.export.onnx")
    from loftup.model import load_checkpoint

    path = tiny_ckpt.parent / "tiny16_ovseg.onnx"  # next to its reference: found from the metadata
    if not path.exists():
        export.export_onnx(load_checkpoint(tiny_ckpt), path, scope="upsampler", sizes=(16, 32, 64), max_batch=2,
                           source=tiny_ckpt, patch_size=4)
    return path


@pytest.mark.export
def test_onnx_engine_parity_on_ovseg(tmp_path, capsys, tiny_clip_file, ovseg_onnx_engine):
    coco = write_coco_object(tmp_path / "coco")
    out = tmp_path / "out"
    code, stdout, err = run(["eval", "--probe", "ovseg", "--engine", ovseg_onnx_engine, "--data", coco, "--layout", "coco_object",
                             "--clip", tiny_clip_file, *FAST, "--out", out], capsys)
    assert code == 0, err
    parity = json.loads((out / "results.json").read_text())["parity"]
    assert parity["probe"] == "ovseg" and parity["primary_metric"] == "miou" and parity["passed"] is True
    ref, tol = parity["reference"]["miou"], parity["tolerance"]
    assert abs(parity["delta"]["miou"]) <= tol["atol"] + tol["rtol"] * abs(ref)
    assert parity["engine"]["images"] == parity["reference"]["images"] == 3
    fp = parity["feature_parity"]
    assert fp["batches"] == 3 * 9 and fp["min_cos"] > 0.999 and fp["max_abs"] < 1e-2  # 9 windows an image
    assert len(parity["feature_parity_per_batch"]) == fp["batches"]
    assert "parity PASS" in stdout


def test_bad_input_is_one_line(tmp_path, capsys, tiny_clip_file):
    city = write_cityscapes(tmp_path / "city")
    base = ["eval", "--probe", "ovseg", "--random-init", "--backbone", "tiny_conv", "--out", tmp_path / "o"]
    code, _, err = run([*base, "--data", city, "--layout", "coco_object", "--clip", tiny_clip_file], capsys)
    assert_one_line_error(code, err, "not a COCO-Object folder", "images/val2017")
    code, _, err = run([*base, "--data", write_ade20k(tmp_path / "ade"), "--clip", tiny_clip_file, "--class-names",
                        tmp_path / "names.txt"], capsys)
    assert_one_line_error(code, err, "class-name file", "names.txt does not exist")
    (tmp_path / "empty.txt").write_text("\n \n")
    code, _, err = run([*base, "--data", city, "--clip", tiny_clip_file, "--class-names", tmp_path / "empty.txt"], capsys)
    assert_one_line_error(code, err, "is empty")
    code, _, err = run([*base, "--data", city], capsys)
    assert_one_line_error(code, err, "needs CLIP weights with the text tower", "--clip")
    vis_only = tmp_path / "visual_only.safetensors"
    sd = clip_state_dict(random_clip(TINY_VISION, TINY_TEXT))
    save_file({k: v.contiguous() for k, v in sd.items() if k.startswith("visual.")}, vis_only)
    code, _, err = run([*base, "--data", city, "--clip", vis_only], capsys)
    assert_one_line_error(code, err, "has no CLIP text tower")
    code, _, err = run([*base, "--data", city, "--clip", tiny_clip_file, "--epochs", "3"], capsys)
    assert_one_line_error(code, err, "--epochs", "trains nothing")
    code, _, err = run([*base, "--data", city, "--clip", tiny_clip_file, "--set", "bogus=1"], capsys)
    assert_one_line_error(code, err, "bogus")
    assert not (tmp_path / "o" / "results.json").exists()
