"""`loftup eval` as a library call: options in, results (and files) out.

    from loftup.eval.runner import EvalOptions, run_eval
    res = run_eval(EvalOptions(probe="seg", data="coco/", engine="model.onnx", baselines="bilinear,lowres"))
    res["parity"]      # ParityReport (truthy when the engine is within tolerance) or None

Modes:
- `engine`: parity - the reference checkpoint (from --reference or the engine's metadata)
  and the engine are evaluated with ONE head trained on the reference's features;
- `checkpoint` / `random_init`: one upsampler of any kind (`upsampler`: loftup, lift, featup_jbu;
  a checkpoint names its own kind, and `upsampler` must agree with it);
- `compare`: several upsamplers side by side, e.g. "loftup:A.safetensors,lift:B.safetensors,
  featup_jbu:C.ckpt,bilinear" (KIND:PATH, KIND:random, or an interpolation baseline), one
  table with a row each - the supplement's comparison tables in one command;
- baselines (lowres, nearest, bilinear, bicubic) are added in any mode, each with its own head.
Files in `out`: results.json, results.md (table + parity line), and with `plot`
{probe}_predictions.png (image | ground truth | each upsampler's prediction).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ConfigError, InputError, check_choice

PROBE_CHOICES = ("seg", "depth", "normals", "video", "matting", "mini", "ovseg", "interactive")
LAYOUTS = {
    "seg": ("auto", "cocostuff27", "cityscapes"),
    "depth": ("auto", "navi", "rgbd"),
    "normals": ("auto", "navi", "rgbd"),
    "video": ("auto", "davis2017"),
    "matting": ("auto", "matting"),
    "mini": ("auto",),
    "ovseg": ("auto", "coco_object", "cityscapes", "ade20k"),
    "interactive": ("auto", "grabcut", "berkeley", "davis", "sbd"),
}
# Probes that live in a module of their own, loftup.eval.<module>, which provides: CONFIG (its
# settings dataclass, what --set may change), probe_config(opts, device), open_data(opts) and
# run(opts, plan, cfg, data, out, atol, rtol, log) -> (results to merge, table, ParityReport or None).
PROBE_MODULES = {"ovseg": "ovseg", "interactive": "interactive"}
DEFAULT_BACKBONE = "dinov2_vits14"


@dataclass
class EvalOptions:
    probe: str
    data: Optional[Path] = None
    engine: Optional[Path] = None
    checkpoint: Optional[Path] = None
    reference: Optional[Path] = None
    random_init: bool = False
    upsampler: Optional[str] = None  # kind of --checkpoint / --random-init (None: the file's; loftup when random)
    compare: str = ""  # "KIND:PATH,KIND:random,bilinear,..." (see parse_compare)
    backbone: Optional[str] = None
    weights: str = "default"
    layout: str = "auto"
    baselines: str = ""
    out: Path = Path("eval_out")
    plot: bool = False
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    size: Optional[int] = None
    input_size: Optional[int] = None
    hidden_dim: Optional[int] = None
    max_train: Optional[int] = None
    max_eval: Optional[int] = None
    atol: Optional[float] = None
    rtol: Optional[float] = None
    quick: bool = False
    device: str = "cpu"
    seed: int = 0
    cuda_graphs: bool = False  # PyTorch upsamplers under test replay CUDA graphs (never the reference)
    memory_budget: Optional[str] = None  # PyTorch upsamplers' tiling budget: a size, or auto / None (the default)
    clip: Optional[str] = None  # ovseg: CLIP weights with the text tower (a file, or "online")
    class_names: Optional[Path] = None  # ovseg: class-name file (one class a line, synonyms split by ";")
    train_data: Optional[Path] = None  # interactive: SBD root the click encoder + decoder are trained on
    head: Optional[Path] = None  # interactive: a saved click encoder + decoder (instead of --train-data)
    progress: bool = True
    force: bool = False  # overwrite results.json / results.md of an earlier run in --out
    extra: dict[str, Any] = field(default_factory=dict)  # further ProbeConfig overrides


def probe_module(probe: str):
    """The module of a probe listed in PROBE_MODULES, else None."""
    import importlib

    return importlib.import_module(f".{PROBE_MODULES[probe]}", __package__) if probe in PROBE_MODULES else None


def parse_settings(items: list[str] | None, probe: str | None = None) -> dict[str, Any]:
    """['radius=8', 'topk=3'] -> {'radius': 8, 'topk': 3}: any ProbeConfig field (or the field of
    the probe module's CONFIG), typed like its default."""
    from .probes import ProbeConfig

    module = probe_module(probe) if probe else None
    fields = (module.CONFIG if module else ProbeConfig).__dataclass_fields__
    settable = sorted(k for k in fields if k not in ("task", "device", "seed"))
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r} (e.g. --set radius=8)")
        check_choice("probe setting", key, settable)
        kind = str(fields[key].type).split("|")[0].strip()  # "int", "float", "bool" (annotations are strings)
        raw = raw.strip()
        try:
            if raw.lower() in ("none", "null") and "None" in str(fields[key].type):
                value = None
            elif kind == "bool":
                value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[raw.lower()]
            elif kind == "int":
                value = int(raw)
            else:
                value = float(raw)
        except (ValueError, KeyError):
            raise ConfigError(f"--set {key}: cannot read {raw!r} as {kind}") from None
        out[key] = value
    return out


def parse_compare(text: str | None) -> tuple[list[tuple[str, str, Optional[Path]]], list[str]]:
    """'loftup:A.safetensors,lift:random,bilinear' -> ([(name, kind, path or None), ...], [baselines]).

    An upsampler item is KIND:PATH (a checkpoint that must hold that kind) or KIND:random (an
    untrained one); a bare item is an interpolation baseline. Names are the kinds, made unique
    with the file's stem when a kind appears twice.
    """
    from ..errors import closest
    from ..model import UPSAMPLER_KINDS
    from .upsamplers import BASELINES

    models: list[tuple[str, str, Optional[Path]]] = []
    baselines: list[str] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        kind, sep, where = item.partition(":")
        if not sep:
            if item in UPSAMPLER_KINDS:
                raise ConfigError(f"--compare item {item!r} needs its weights: {item}:PATH (or {item}:random for an untrained one)")
            if item not in BASELINES:
                raise ConfigError(f"--compare item {item!r} is neither KIND:PATH nor a baseline{closest(item, [*BASELINES, *UPSAMPLER_KINDS])}; "
                                  f"kinds: {', '.join(UPSAMPLER_KINDS)}; baselines: {', '.join(BASELINES)}")
            if item not in baselines:
                baselines.append(item)
            continue
        check_choice("upsampler kind", kind, UPSAMPLER_KINDS)
        path = None if where == "random" else Path(where).expanduser()
        if path is not None and not path.is_file():
            raise InputError(f"--compare {kind}: checkpoint {path} does not exist")
        models.append((kind, kind, path))
    counts = {k: sum(m[1] == k for m in models) for k in {m[1] for m in models}}
    named = [(kind if counts[kind] == 1 else f"{kind}:{path.stem if path else 'random'}", kind, path) for _, kind, path in models]
    if len({n for n, _, _ in named}) != len(named):
        raise ConfigError("--compare names the same upsampler twice; give each file once")
    return named, baselines


def _check(opts: EvalOptions) -> list[str]:
    """Cheap validation before anything is loaded; returns the parsed baselines."""
    from ..model import UPSAMPLER_KINDS
    from .upsamplers import parse_baselines

    check_choice("probe", opts.probe, PROBE_CHOICES)
    check_choice(f"{opts.probe} data layout", opts.layout, LAYOUTS[opts.probe])
    if opts.upsampler is not None:
        check_choice("upsampler kind", opts.upsampler, UPSAMPLER_KINDS)
    baselines = parse_baselines(opts.baselines)
    compared, compare_baselines = parse_compare(opts.compare)
    baselines += [b for b in compare_baselines if b not in baselines]
    chosen = [n for n, v in (("--engine", opts.engine), ("--checkpoint", opts.checkpoint), ("--random-init", opts.random_init),
                             ("--compare", compared)) if v]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} exclude each other; evaluate one upsampler at a time, or list them all in --compare")
    if opts.upsampler is not None and not (opts.checkpoint or opts.random_init):
        raise ConfigError("--upsampler goes with --checkpoint or --random-init (in --compare write KIND:PATH)")
    if not chosen and not baselines and shipped_default(opts) is None:
        raise ConfigError("nothing to evaluate: pass --engine PATH, --checkpoint PATH, --random-init or --compare KIND:PATH,..., "
                          "and/or --baselines bilinear,lowres (no trained weights ship for this backbone)")
    if opts.reference is not None and opts.engine is None:
        raise ConfigError("--reference is only used with --engine (it is the checkpoint the engine was exported from)")
    if opts.probe != "mini" and opts.data is None:
        raise InputError(f"the {opts.probe} probe needs a dataset: pass --data DIR (or use --probe mini, which needs none)")
    for key in ("size", "input_size", "epochs", "batch_size", "hidden_dim", "max_train", "max_eval"):
        value = getattr(opts, key)
        if value is not None and value < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be a positive integer, got {value} (leave it out for the default)")
    if opts.lr is not None and not opts.lr > 0:
        raise ConfigError(f"--lr must be positive, got {opts.lr}")
    if opts.cuda_graphs and not str(opts.device).startswith("cuda"):
        raise ConfigError("--cuda-graphs needs --device cuda (CUDA graphs replay GPU work)")
    memory_budget(opts)  # a bad --memory-budget is reported before anything loads
    return baselines


def open_data(probe: str, root: Path, layout: str = "auto") -> tuple[Any, Any]:
    """(train, val) for a probe; video: (None, list of videos)."""
    from . import datasets as D

    if probe == "seg":
        return D.open_segmentation(root, "train", layout), D.open_segmentation(root, "val", layout)
    if probe in ("depth", "normals"):
        return D.open_depth(root, "train", layout), D.open_depth(root, "val", layout)
    if probe == "video":
        return None, D.open_davis2017(root, "val")
    return D.open_matting(root, "train"), D.open_matting(root, "val")


@dataclass
class EvalPlan:
    """What one `loftup eval` run evaluates: the backbone runner and the named upsamplers."""

    backbone: str
    runner: Any
    sources: dict[str, Any]
    shared: dict[str, str] = field(default_factory=dict)  # engine -> reference: fitted on the reference's features
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (reference, engine): feature parity
    handle: Any = None
    reference_path: Optional[Path] = None
    weights: str = ""  # which upsampler weights a checkpoint run uses (said in the log and results.json)


def check_out(out: Path, force: bool = False) -> None:
    """`--out` must be a folder (new or existing) that can be written and, without --force, holds
    no results.json / results.md of an earlier run; checked before any work."""
    from ..export.exporter import check_writable_folder
    from ..io import refuse_existing

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for results.json and results.md")
    check_writable_folder(out)
    if not force:
        refuse_existing([out / "results.json", out / "results.md"])


def shipped_default(opts: EvalOptions) -> Path | None:
    """The packaged checkpoint evaluated when no upsampler is named (no --engine, --checkpoint,
    --random-init or --compare), for the backbone and weights asked for; None when none ships."""
    if opts.engine or opts.checkpoint or opts.random_init or opts.compare:
        return None
    from ..model.checkpoint import shipped_checkpoint

    return shipped_checkpoint(opts.backbone or DEFAULT_BACKBONE, opts.weights)


def memory_budget(opts: EvalOptions) -> int | None:
    """--memory-budget in bytes; None for auto (the default, taken when each model runs)."""
    from ..runtime.budget import explicit_memory_budget

    return explicit_memory_budget(opts.memory_budget)


def probe_tolerance(opts: EvalOptions, handle) -> tuple[float, float]:
    """(atol, rtol) of the engine-vs-reference probe check: --atol / --rtol, else the engine format
    row's own for its precision (a quantized engine, `loftup.export.formats.PrecisionTolerance`),
    else the float default."""
    from ..export.formats import FORMATS
    from .parity import DEFAULT_ATOL, DEFAULT_RTOL

    md = handle.metadata if handle is not None else {}
    row = FORMATS[md["format"]].tolerance(md.get("precision", "fp32")) if md.get("format") in FORMATS else None
    atol = opts.atol if opts.atol is not None else row.probe_atol if row else DEFAULT_ATOL
    rtol = opts.rtol if opts.rtol is not None else row.probe_rtol if row else DEFAULT_RTOL
    return atol, rtol


def plan_eval(opts: EvalOptions, cfg, device: str, baselines: list[str]) -> EvalPlan:
    """Load the backbone and build every upsampler under test (engine + its reference, or a model)."""
    from ..backbones import create_backbone
    from ..model import kind_of, load_checkpoint
    from .upsamplers import (
        BackboneRunner,
        EngineFeatures,
        LoftUpFeatures,
        check_engine_fits,
        make_baseline,
        open_engine,
        resolve_reference,
    )

    budget = memory_budget(opts)
    handle = open_engine(opts.engine, cuda_graphs=opts.cuda_graphs) if opts.engine else None
    ckpt_path = opts.checkpoint or shipped_default(opts)
    ckpt_model = load_checkpoint(ckpt_path, kind=opts.upsampler) if ckpt_path else None
    compared = [(n, kind, load_checkpoint(path, kind=kind) if path else None) for n, kind, path in parse_compare(opts.compare)[0]]
    named = [m.cfg.backbone for _, _, m in compared if m is not None and m.cfg.backbone]
    name = (opts.backbone or (handle.backbone if handle else None) or (ckpt_model.cfg.backbone if ckpt_model else None)
            or (named[0] if named else None) or DEFAULT_BACKBONE)
    if handle is not None:
        check_engine_fits(handle, name)  # before loading the backbone: exported for another one?
    backbone = create_backbone(name, weights=opts.weights, device=device)
    runner = BackboneRunner(backbone, runner_input_size(cfg.input_size, handle))
    plan = EvalPlan(name, runner, {}, handle=handle)
    if handle is not None:
        check_engine_fits(handle, name, runner)
        plan.reference_path = resolve_reference(handle, opts.reference)
        ref_model = load_checkpoint(plan.reference_path, feat_dim=runner.embed_dim).to(device)
        plan.sources["reference"] = LoftUpFeatures(runner, ref_model, "reference", reference=True, memory_budget=budget)
        plan.sources["engine"] = EngineFeatures(runner, handle, "engine")
        plan.shared, plan.pairs = {"engine": "reference"}, [("reference", "engine")]
    elif ckpt_model is not None:
        _check_channels(ckpt_model, Path(ckpt_path).name, name, runner)
        kind = kind_of(ckpt_model)
        plan.sources[kind] = LoftUpFeatures(runner, ckpt_model.to(device), kind, cuda_graphs=opts.cuda_graphs, memory_budget=budget)
        from ..model.checkpoint import describe_weights

        plan.weights = describe_weights(ckpt_model)
    elif opts.random_init:
        kind = opts.upsampler or "loftup"
        model = _random_model(kind, runner, name, opts.seed).to(device)
        plan.sources[f"{kind}-random"] = LoftUpFeatures(runner, model, f"{kind}-random", cuda_graphs=opts.cuda_graphs,
                                                        memory_budget=budget)
    for source_name, kind, model in compared:
        if model is None:
            model = _random_model(kind, runner, name, opts.seed)
        else:
            _check_channels(model, Path(model.source_checkpoint).name, name, runner)
        plan.sources[source_name] = LoftUpFeatures(runner, model.to(device), source_name, cuda_graphs=opts.cuda_graphs,
                                                   memory_budget=budget)
    for b in baselines:
        plan.sources[b] = make_baseline(b, runner)
    return plan


def runner_input_size(asked, handle):
    """The backbone input rule of every source: --input-size, else a pipeline engine's recorded rule
    (its graph applies it, so its reference must too), else `pipeline.DEFAULT_INPUT_SIZE`."""
    from ..pipeline import DEFAULT_INPUT_SIZE

    if asked is not None:
        return asked
    if handle is not None and handle.scope == "pipeline":
        return handle.metadata.get("input_size")
    return DEFAULT_INPUT_SIZE


def _check_channels(model, file_name: str, backbone: str, runner) -> None:
    if model.cfg.feat_dim != runner.embed_dim:
        raise InputError(f"checkpoint {file_name} upsamples {model.cfg.feat_dim}-channel features but "
                         f"backbone {backbone!r} gives {runner.embed_dim}; pass --backbone with the checkpoint's backbone")


def _random_model(kind: str, runner, backbone: str, seed: int):
    """An untrained upsampler of `kind` for the runner's backbone (LiFT records its patch size)."""
    from ..model import load_or_init

    extra = {"patch_size": runner.patch_size} if kind == "lift" else {}
    return load_or_init(None, random_init=True, feat_dim=runner.embed_dim, backbone=backbone, seed=seed, kind=kind, **extra)


def run_mini(opts: EvalOptions, plan: EvalPlan, out: Path, atol: float, rtol: float, log) -> tuple[dict[str, Any], str, Any]:
    """The offline mini benchmark: (results to merge, table, ParityReport or None)."""
    from .mini import flatten_mini, run_mini_benchmark
    from .parity import ParityReport, compare_metrics, summarize_features

    mini = run_mini_benchmark(plan.sources, out, quick=opts.quick, plot=opts.plot, seed=opts.seed, shared=plan.shared,
                              size=opts.size, log=log)
    parity = None
    if plan.handle is not None:
        ref, eng = flatten_mini(mini["upsamplers"]["reference"]), flatten_mini(mini["upsamplers"]["engine"])
        delta, failures = compare_metrics(ref, eng, atol, rtol)
        feats = [dict(b, batch=i) for i, b in enumerate(mini["feature_parity"]["reference~engine"])]
        parity = ParityReport("mini", "voc/seg/miou", ref, eng, delta, summarize_features(feats), feats, atol, rtol, failures)
    return {"metrics": mini["upsamplers"], "mini": mini}, mini["table"], parity


def run_task(opts: EvalOptions, plan: EvalPlan, cfg, data, out: Path, atol: float, rtol: float, log) -> tuple[dict[str, Any], str, Any]:
    """One dataset probe: (results to merge, table, ParityReport or None)."""
    from . import report
    from .parity import PRIMARY, parity_report, run_probe

    train, val = data
    result, info = run_probe(opts.probe, plan.sources, cfg, train, val, plan.shared, plan.pairs, opts.progress, log)
    results = {"metrics": result.metrics, "config": cfg.to_dict(), **info}
    parity = parity_report(opts.probe, result, PRIMARY[opts.probe], atol=atol, rtol=rtol) if plan.handle is not None else None
    table = report.metrics_table(opts.probe, result.metrics, parity.delta if parity else None)
    if opts.plot:
        n_classes = (train or val).meta.get("num_classes") if opts.probe == "seg" else None
        pic = report.plot_samples(opts.probe, result.samples, out / f"{opts.probe}_predictions.png", n_classes)
        results["pictures"] = [str(pic)] if pic else []
    return results, table, parity


def write_results(out: Path, results: dict[str, Any], table: str, parity) -> None:
    """results.json and results.md, each written atomically."""
    from . import report

    report.write_json(out / "results.json", results)
    text = f"# loftup eval: {results['probe']} ({results['backbone']})\n\n"
    if results.get("weights"):
        text += f"{results['weights']}.\n\n"
    text += f"{table}\n"
    if parity is not None:
        text += f"\n{parity.summary()}\n"
    report.write_text(out / "results.md", text)


def run_eval(opts: EvalOptions, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate the requested upsamplers on one probe; write results to opts.out; return them."""
    from ..runtime.devices import resolve_device
    from .probes import probe_config

    log = log or (lambda msg: None)
    baselines = _check(opts)
    out = Path(opts.out)
    check_out(out, opts.force)
    device = str(resolve_device(opts.device))
    module = probe_module(opts.probe)
    if module is not None:
        cfg = module.probe_config(opts, device)
    else:
        cfg = probe_config("seg" if opts.probe == "mini" else opts.probe, epochs=opts.epochs, batch_size=opts.batch_size,
                           lr=opts.lr, size=opts.size, input_size=opts.input_size, hidden_dim=opts.hidden_dim,
                           max_train=opts.max_train, max_eval=opts.max_eval, seed=opts.seed, device=device)
    cfg = replace(cfg, **opts.extra)  # --set: applied as given (None included)

    # data first: a wrong folder fails before any model is loaded
    if module is not None:
        data = module.open_data(opts)
    else:
        data = open_data(opts.probe, Path(opts.data), opts.layout) if opts.probe != "mini" else (None, None)
    plan = plan_eval(opts, cfg, device, baselines)
    atol, rtol = probe_tolerance(opts, plan.handle)
    log(f"backbone {plan.backbone} ({plan.runner.embed_dim} channels, patch {plan.runner.patch_size}); upsamplers: {', '.join(plan.sources)}")
    if plan.weights:
        log(plan.weights)
    if plan.handle is not None:
        log(f"engine {plan.handle.path.name} (scope {plan.handle.scope}) vs reference {plan.reference_path}")

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
    results: dict[str, Any] = {
        "probe": opts.probe, "backbone": plan.backbone, "options": settings,
        "reference": str(plan.reference_path) if plan.reference_path else None,
        "upsamplers": {n: s.describe() for n, s in plan.sources.items()}, "weights": plan.weights or None,
    }
    out.mkdir(parents=True, exist_ok=True)
    if opts.probe == "mini":
        found, table, parity = run_mini(opts, plan, out, atol, rtol, log)
    elif module is not None:
        found, table, parity = module.run(opts, plan, cfg, data, out, atol, rtol, log)
    else:
        found, table, parity = run_task(opts, plan, cfg, data, out, atol, rtol, log)
    results.update(found, table=table)
    if parity is not None:
        results["parity"] = parity.to_dict()
    write_results(out, results, table, parity)
    results["parity_report"] = parity
    results["out"] = out
    return results


__all__ = ["LAYOUTS", "PROBE_CHOICES", "EvalOptions", "open_data", "parse_compare", "parse_settings", "run_eval"]
