"""One Engine interface for every runnable form of LoftUp, and `load_engine(path)`.

    engine = load_engine("loftup.onnx")          # or .plan, or a PyTorch checkpoint
    hr = engine(images)                          # pipeline form: (B, 3, H, W) -> (B, C, H, W)
    hr = engine(lr_feats, image)                 # upsampler form: raw backbone features + guidance
    engine.metadata.feat_dim, engine.metadata.parity, ...

Images are RGB in [0, 1] normalised with `metadata.mean` / `metadata.std`, at the output size
(the guidance image, see `loftup.pipeline`); `lr_feats` are raw backbone patch features
(before LoftUp's channel norm). Inputs and outputs are torch tensors; the output is float32
whatever the engine computes in. Upsample, eval, bench and the demo talk to this interface
only, so they never branch on the runtime. The runtime of a file comes from the format table
(`formats.FORMATS`); this module imports neither onnx nor tensorrt.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, InputError, check_choice
from ..runtime.devices import autocast, emulated_bf16_warning
from .formats import PRECISIONS, format_for_path
from .metadata import EngineMetadata, base_metadata

REFERENCE_BACKEND = "sdpa"  # the attention every parity reference runs (exact, on CPU and GPU)


# ------------------------------------------------------------------------------------------
class Engine:
    """Base class: validates inputs against the metadata, then runs `_run`.

    Subclasses set `self.metadata` and implement `_run(inputs) -> torch.Tensor`.
    """

    metadata: EngineMetadata
    name: str = "engine"

    @property
    def scope(self) -> str:
        return self.metadata.scope

    def _build(self) -> None:
        """The module this engine runs, made from `self.source`: on CPU its inference variant (a copy,
        `deploy.cpu_variant`), the memory budget, channels-last and compiled stages; and the
        pipeline around it."""
        from ..model import deploy
        from ..pipeline import Pipeline

        model = self.source
        if self.optimize and self.device.type == "cpu":
            model = deploy.cpu_variant(model, self.precision)
        if self.memory_budget is not None and hasattr(getattr(model, "upsampler", None), "memory_budget"):
            model.upsampler.memory_budget = int(self.memory_budget)  # LoftUp tiles to stay under it
        if self.channels_last or self.compile_stages:
            deploy.use_channels_last(model, self.channels_last)
            if self.compile_stages:  # True: inductor; a string: that torch.compile backend
                deploy.compile_stages(model, backend="inductor" if self.compile_stages is True else self.compile_stages)
        self.model = model
        self.pipeline = Pipeline(self.backbone, model, self.input_size).eval() if self.backbone is not None else None
        self._up, self._pipe = self.model, self.pipeline
        if self.compiled and getattr(model, "kind", None) == "loftup":  # per tile: the tile loop keeps the memory budget
            deploy.compile_query_path(model)
            if self.pipeline is not None:
                self.pipeline.backbone = torch.compile(self.backbone)
        elif self.compiled:
            self._up = torch.compile(model)
            self._pipe = torch.compile(self.pipeline) if self.pipeline is not None else None
        self._built_from = weights_version(self.source)

    def refresh(self) -> None:
        """Rebuild what runs when the source module's weights changed in place since (an optimiser
        step, `load_state_dict`) or it moved (`FeatureUpsampler.to`), so the engine always computes
        with the weights the user holds. A no-op otherwise (one version read per parameter)."""
        if self._built_from is not None and weights_version(self.source) == self._built_from:
            return
        if self.cuda_graphs:
            raise InputError("the model's weights changed after its CUDA graphs were captured; make a new engine")
        self._build()

    def accepts(self, n_inputs: int) -> bool:
        """Whether the engine takes the 1-input pipeline form or the 2-input upsampler form."""
        return n_inputs == len(self.metadata.input_names)

    def __call__(self, *inputs):
        """engine(images) or engine(lr_feats, image) -> hr feats (B, C, H, W)."""
        self.check_inputs(inputs)
        out = self._run(inputs)
        if not getattr(self, "_output_checked", False):
            self.check_output(out, inputs[-1])
            self._output_checked = True
        return out

    def check_output(self, out, image: torch.Tensor) -> None:
        """The first output against the metadata: float32 (B, feat_dim, H, W) for a (B, 3, H, W) image.

        A graph that is not the one `loftup export` wrote (other channels, size or type) is refused
        with one line before anything it computed is used.
        """
        md = self.metadata
        want = (int(image.shape[0]), int(md.feat_dim), *(int(s) for s in image.shape[-2:]))
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        dtype = getattr(out, "dtype", type(out).__name__)
        if got != want or dtype != torch.float32:
            name = Path(getattr(self, "path", "") or "this engine").name
            raise CheckpointError(
                f"{name} returned {str(dtype).replace('torch.', '')} {got} for a {tuple(image.shape)} image, but its loftup metadata "
                f"promises float32 {want}; it is not the graph `loftup export` wrote - export the engine again"
            )

    def check_inputs(self, inputs) -> None:
        md = self.metadata
        if not self.accepts(len(inputs)):
            form = "engine(images)" if md.scope == "pipeline" else "engine(lr_feats, image)"
            raise InputError(f"this {md.scope} engine is called as {form}, got {len(inputs)} input(s)")
        names = ("image",) if len(inputs) == 1 else ("lr_feats", "image")
        for name, x in zip(names, inputs):
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                raise InputError(f"{name} must be a 4-D torch tensor (B, C, H, W), got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
            if not x.is_floating_point():
                raise InputError(f"{name} must be a floating-point tensor, got {x.dtype}")
        image = inputs[-1]
        if image.shape[1] != 3:
            raise InputError(f"image must have 3 channels (RGB), got shape {tuple(image.shape)}")
        if len(inputs) == 2:
            lr = inputs[0]
            if lr.shape[1] != md.feat_dim:
                raise InputError(
                    f"lr_feats has {lr.shape[1]} channels but this engine upsamples {md.feat_dim}-channel features; "
                    "use the engine built for your backbone"
                )
            if lr.shape[0] != image.shape[0]:
                raise InputError(f"batch sizes differ: lr_feats {lr.shape[0]}, image {image.shape[0]}")
        for name, x in zip(names, inputs):
            rng = md.input_shapes.get(name)
            if not rng:
                continue
            lo, hi = rng["min"], rng["max"]
            for axis in (0, 2, 3):
                if not lo[axis] <= x.shape[axis] <= hi[axis]:
                    what = {0: "batch", 2: "height", 3: "width"}[axis]
                    raise InputError(
                        f"{name} {what} {x.shape[axis]} is outside this engine's range [{lo[axis]}, {hi[axis]}] "
                        f"(shape {tuple(x.shape)}); resize the input or export again with other --min-size/--max-size/--max-batch"
                    )

    def _run(self, inputs):  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        md = self.metadata
        return f"{self.name}: {md.format} {md.scope} C={md.feat_dim} {md.precision}" + (f" backbone={md.backbone}" if md.backbone else "")


# ------------------------------------------------------------------------------------------
def with_attention_backend(model, backend: str):
    """Copy of a LoftUp model whose attention runs on `backend` (reference, sdpa, triton, auto).

    Other kinds have no attention: LiFT is returned as it is; FeatUp-JBU's adaptive convolution
    runs on Triton for "triton", PyTorch for "reference"/"sdpa" (the parity reference), and its
    own choice for "auto".
    """
    from ..kernels import AttentionDispatcher

    if getattr(model, "kind", "loftup") != "loftup":
        if not hasattr(model, "with_backend"):
            return model
        return model.with_backend({"reference": "torch", "sdpa": "torch"}.get(backend, backend))
    model = copy.deepcopy(model)
    dispatcher = AttentionDispatcher(backend)
    for module in model.modules():
        if hasattr(module, "dispatcher"):
            module.dispatcher = dispatcher
    model.cfg = model.cfg.replace(attn_backend=backend)
    model.upsampler.cfg = model.cfg
    return model


class TorchEngine(Engine):
    """The PyTorch reference as an engine: an upsampler of any kind, optionally with its backbone.

    Both forms answer at the guidance image's size (`loftup.pipeline.fit_output` for kinds
    whose own output is another size); the model always runs in eval mode.

    With a backbone it takes both forms (pipeline and upsampler) and runs `loftup.pipeline.
    Pipeline` (input_size: its backbone input rule). precision "bf16"/"fp16" runs under
    autocast (`loftup.runtime.devices.autocast`); compile=True wraps the forward in torch.compile (one
    compilation per input shape; LoftUp: each tile's query path and the backbone, the tile loop
    stays eager so the memory budget still holds).

    GPU runtime options (`loftup.model.deploy`, LoftUp only; other kinds run as they are):
    channels_last (None: on for bf16/fp16 on CUDA) runs the convolutions channels-last;
    compile_stages (True, or a torch.compile backend name) compiles the Fourier-feature stage
    and the FFNs; cuda_graphs replays one CUDA graph per input shape (`loftup.export.cuda_graphs`;
    CUDA only). memory_budget: bytes of process peak RSS LoftUp's tiling keeps under (None: the
    default, `loftup.runtime.budget`).

    On CPU a LoftUp model runs as its CPU inference variant (`loftup.model.deploy.cpu_variant`, a
    copy): BatchNorm folded, and bf16 / fp16 natively (weights in that dtype, no autocast round
    trips; the Fourier featurizers stay float32); channels-last convs unless channels_last=False.
    optimize=False runs the module as it is, under autocast for bf16 / fp16 (the parity
    reference does). `source` is the module as given (official keys, trainable); when its weights
    change in place the engine rebuilds what it runs on the next call (`refresh`).
    """

    name = "torch"

    def __init__(self, model, backbone=None, precision: str = "fp32", compile: bool = False, device: str = "cpu",
                 metadata: EngineMetadata | None = None, source: str | Path | None = None, input_size=None,
                 cuda_graphs: bool = False, channels_last: bool | None = None, compile_stages: bool | str = False,
                 memory_budget: int | None = None, optimize: bool = True):
        from . import cuda_graphs as graphs

        check_choice("precision", precision, PRECISIONS)
        self.device = torch.device(device)
        slow = emulated_bf16_warning(self.device, precision)
        if slow:
            warnings.warn(slow, stacklevel=2)
        if cuda_graphs:
            graphs.check_device(self.device)
        self.source = model.eval().to(self.device)  # the module as given: its weights, keys and layout
        self.precision, self.optimize, self.memory_budget = precision, optimize, memory_budget
        if channels_last is None:  # CUDA: for cuDNN's bf16 / fp16 convs; CPU: oneDNN's convs, and tokens become views
            channels_last = (self.device.type == "cuda" and precision != "fp32") or (optimize and self.device.type == "cpu")
        self.channels_last = channels_last
        self.compile_stages = compile_stages
        self.compiled = compile
        self.backbone = backbone.eval().to(self.device) if backbone is not None else None
        self.input_size = input_size
        self._build()
        self.cuda_graphs = cuda_graphs
        self._graphs = {"up": graphs.GraphRunner(self._up), "pipe": graphs.GraphRunner(self._pipe)} if cuda_graphs else None
        scope = "pipeline" if backbone is not None else "upsampler"
        self.metadata = metadata or base_metadata(model, backbone, fmt="torch", scope=scope, precision=precision, source=source)
        self.metadata.input_size = input_size

    def accepts(self, n_inputs: int) -> bool:
        return n_inputs == 2 or (n_inputs == 1 and self.pipeline is not None)

    def check_inputs(self, inputs) -> None:
        if len(inputs) == 1 and self.pipeline is None:
            raise InputError("this PyTorch engine has no backbone, so it is called as engine(lr_feats, image); pass backbone= to load_engine for the pipeline form")
        super().check_inputs(inputs)

    def _context(self):
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.device, self.precision, cache_enabled=not self.cuda_graphs))
        return stack

    def _run(self, inputs, graphs: bool = True):
        from ..pipeline import fit_output

        self.refresh()
        inputs = [x.to(self.device, torch.float32) for x in inputs]
        replay = self._graphs if graphs else None
        with self._context():
            if len(inputs) == 1:
                out = replay["pipe"](*inputs) if replay else self._pipe(*inputs)
            else:  # upsampler form: the output at the guidance size, as the pipeline gives it
                out = replay["up"](*inputs) if replay else self._up(*inputs)
                if not getattr(self.model, "output_at_guidance_size", True):
                    out = fit_output(out, inputs[1].shape[-2:])
        # float32 in the layout the model produced (channels-last on CPU). `to` returns a float32
        # tensor itself whatever memory_format asks, so fp32 never made a contiguous copy; for bf16,
        # converting to a contiguous layout took 128 ms at 224 px against 48 ms as it lies.
        return out.float()

    def run_eager(self, *inputs):
        """engine(...) without CUDA-graph replay (what the per-stage profiler times)."""
        self.check_inputs(inputs)
        return self._run(inputs, graphs=False)

    def backbone_features(self, image: torch.Tensor) -> torch.Tensor:
        """The pipeline's first half: raw backbone features (B, C, h, w) of a guidance image, float32."""
        if self.pipeline is None:
            raise InputError("this PyTorch engine has no backbone; pass backbone= to load_engine")
        self.check_inputs((image,))
        self.refresh()
        with self._context():
            return self.pipeline.backbone_features(image.to(self.device, torch.float32)).float()


def weights_version(module) -> tuple:
    """Where a module's tensors stand: each parameter's and buffer's in-place version counter and
    storage, so an optimiser step, `load_state_dict` or a move to another device changes it."""
    return tuple((t._version, t.data_ptr(), t.device.type) for t in (*module.parameters(), *module.buffers()))


def reference_engine(model, backbone=None, device: str = "cpu", input_size=None, memory_budget: int | None = None) -> TorchEngine:
    """The PyTorch reference every parity check compares with (export, bench, eval, demo):
    fp32, BatchNorm unfolded, `REFERENCE_BACKEND` attention; memory_budget: its tiling budget
    (exact tiles; None: the default, `loftup.runtime.budget`)."""
    return TorchEngine(with_attention_backend(model, REFERENCE_BACKEND), backbone, device=device, input_size=input_size,
                       optimize=False, memory_budget=memory_budget)


# ------------------------------------------------------------------------------------------
def load_engine(path: str | Path, *, backbone=None, providers: list[str] | None = None, threads: int | None = None,
                device: str = "cpu", precision: str = "fp32", attn_backend: str | None = None, compile: bool = False,
                cuda_graphs: bool = False) -> Engine:
    """Open any engine file; the runtime is the format table's row for its suffix (formats.FORMATS).

    .onnx -> OnnxEngine (providers: ONNX Runtime providers in preference order; threads: intra-op
    threads); .plan -> TensorRTEngine; a PyTorch checkpoint -> TorchEngine (backbone: a name
    from `loftup backbones`, a Backbone module, or None for the upsampler form only;
    precision/attn_backend/compile/cuda_graphs apply to it).
    """
    path = Path(path)
    fmt = format_for_path(path)
    if not path.exists():
        raise InputError(f"engine file {path} does not exist")
    if cuda_graphs and "cuda_graphs" not in fmt.open_options:
        raise ConfigError(f"--cuda-graphs applies to PyTorch engines; {path.name} is a {fmt.name} engine (its runtime schedules the GPU itself)")
    options = {"providers": providers, "threads": threads, "backbone": backbone, "device": device,
               "precision": precision, "attn_backend": attn_backend, "compile": compile, "cuda_graphs": cuda_graphs}
    return fmt.hook("open")(path, **{k: options[k] for k in fmt.open_options})


def open_pipeline(backbone: str, upsampler: str | Path | None = None, *, weights: str = "default", device: str = "cpu",
                  precision: str = "fp32", input_size=None, attn_backend: str = "auto", cuda_graphs: bool = False,
                  memory_budget: str | int | None = None, seed: int = 0) -> TorchEngine:
    """Backbone + upsampler as the TorchEngine that `loftup upsample --checkpoint` and `loftup.load`
    both run: one function with one set of defaults, so the two are equal by construction.

    upsampler: None (the shipped checkpoint), "shipped", "official", "random" or a checkpoint path
    (`loftup.model.registry.resolve_upsampler`); weights: the backbone's ("default": the ones the
    upsampler was trained with); input_size: the backbone input rule, None for the pipeline's
    default (`loftup.pipeline.DEFAULT_INPUT_SIZE`); memory_budget: "auto" / None or a size ("2GB").
    """
    from ..backbones import create_backbone
    from ..model import load_or_init
    from ..model.registry import resolve_upsampler
    from ..pipeline import DEFAULT_INPUT_SIZE
    from ..runtime.budget import explicit_memory_budget

    checkpoint, weights = resolve_upsampler(upsampler, backbone, weights)
    bb = create_backbone(backbone, weights=weights, device=device)
    model = load_or_init(checkpoint, random_init=checkpoint is None, feat_dim=bb.embed_dim, backbone=backbone, seed=seed,
                         attn_backend=attn_backend)
    if model.cfg.backbone and model.cfg.backbone != backbone:
        warnings.warn(f"checkpoint was trained on {model.cfg.backbone!r} features, running it on {backbone!r}")
    return TorchEngine(model, bb, precision=precision, device=str(device), cuda_graphs=cuda_graphs,
                       input_size=DEFAULT_INPUT_SIZE if input_size is None else input_size,
                       memory_budget=explicit_memory_budget(memory_budget))


def open_checkpoint(path: Path, *, backbone=None, threads: int | None = None, device: str = "cpu", precision: str = "fp32",
                    attn_backend: str | None = None, compile: bool = False, cuda_graphs: bool = False) -> TorchEngine:
    """An upsampler checkpoint (any kind) as a TorchEngine (the format table's `open` hook for PyTorch files)."""
    from ..model import load_checkpoint

    overrides = {"attn_backend": attn_backend} if attn_backend else {}
    if isinstance(backbone, str):
        from ..backbones import create_backbone

        backbone = create_backbone(backbone, device=device)
    model = load_checkpoint(path, feat_dim=getattr(backbone, "embed_dim", None), **overrides)
    if threads:
        torch.set_num_threads(int(threads))
    return TorchEngine(model, backbone, precision=precision, compile=compile, device=device, source=path, cuda_graphs=cuda_graphs)
