"""Run folder layout, training-state files, CSV / TensorBoard logs and the progress bar.

    RUN/config.yaml                 the resolved TrainConfig (what --resume continues); `out: .`,
                                    paths relative to RUN or absolute, so RUN can be moved or copied
    RUN/log.csv                     one row per logged step
    RUN/tb/                         TensorBoard events (only if `tensorboard` is installed)
    RUN/checkpoints/step-XXXXXXXX.safetensors (+ .json)   student weights, our format
    RUN/checkpoints/step-XXXXXXXX.state.pt                 optimiser, scheduler, EMA teacher,
                                                           step, RNG (tensors/primitives only)
    RUN/checkpoints/latest          name of the newest complete checkpoint (written last)
    RUN/model.safetensors (+ .json) final student; RUN/teacher.safetensors: final EMA teacher
    RUN/summary.json                steps, losses, throughput, skipped samples
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError
from ..io import atomic_write, load_weights_only

STATE_FORMAT = "loftup-train-state"


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.yaml")
    log = property(lambda self: self.root / "log.csv")
    tb = property(lambda self: self.root / "tb")
    ckpt_dir = property(lambda self: self.root / "checkpoints")
    summary = property(lambda self: self.root / "summary.json")

    def weights(self, step: int) -> Path:
        return self.ckpt_dir / f"step-{step:08d}.safetensors"

    def state(self, step: int) -> Path:
        return self.ckpt_dir / f"step-{step:08d}.state.pt"

    def latest_step(self) -> int | None:
        p = self.ckpt_dir / "latest"
        if not p.is_file():
            return None
        name = p.read_text().strip()
        try:
            return int(name.split("-")[-1])
        except ValueError:
            raise CheckpointError(f"{p} is damaged ({name!r}); delete it to start over or fix the step name") from None

    def checkpoint_steps(self) -> list[int]:
        """Steps that have a training-state file, newest first."""
        steps = []
        for p in self.ckpt_dir.glob("step-*.state.pt"):
            try:
                steps.append(int(p.name[5:13]))
            except ValueError:
                continue
        return sorted(steps, reverse=True)

    def checkpoint_problem(self, step: int) -> str:
        """'' if the weights and state of `step` can be read, else why not (one line)."""
        from ..io import read_tensors

        try:
            read_tensors(self.weights(step))
            load_state(self.state(step))
        except CheckpointError as e:
            return str(e)
        return ""

    def resume_step(self, warn: Callable[[str], None]) -> int | None:
        """The newest checkpoint that can be read (not newer than `latest`), or None if there is none.

        Unreadable ones (e.g. cut short by a full disk) are skipped; `warn(msg)` says which and why,
        and which step the run resumes from. CheckpointError if checkpoints exist but none is readable.
        """
        try:
            newest = self.latest_step()
        except CheckpointError as e:  # a damaged `latest` file: every checkpoint is a candidate
            warn(f"{e}; using the newest readable checkpoint instead")
            newest = None
        steps = [s for s in self.checkpoint_steps() if newest is None or s <= newest]
        if newest is not None and newest not in steps:
            steps.insert(0, newest)
        if not steps:
            return None
        for step in steps:
            if self.weights(step).is_file() and self.state(step).is_file():
                problem = self.checkpoint_problem(step)
            else:
                problem = f"its files in {self.ckpt_dir} are missing"
            if not problem:
                if step != steps[0]:
                    warn(f"resuming from step {step}, the newest readable checkpoint in {self.ckpt_dir}")
                return step
            warn(f"skipping the step-{step} checkpoint: {problem}")
        raise CheckpointError(
            f"no readable checkpoint in {self.ckpt_dir} (tried steps {', '.join(map(str, steps))}); "
            "start a new run with another --out"
        )

    def mark_latest(self, step: int) -> None:
        atomic_write(self.ckpt_dir / "latest", lambda p: p.write_text(f"step-{step:08d}\n"))

    def prune(self, keep_last: int) -> None:
        steps = sorted(int(p.name[5:13]) for p in self.ckpt_dir.glob("step-*.state.pt"))
        for s in steps[:-keep_last] if keep_last > 0 else []:
            for p in (self.weights(s), self.weights(s).with_suffix(".json"), self.state(s)):
                p.unlink(missing_ok=True)


def save_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save a dict of tensors and primitives, atomically."""
    atomic_write(Path(path), lambda p: torch.save({"format": STATE_FORMAT, **state}, p))


def load_state(path: Path) -> dict[str, Any]:
    """Read a training-state file with weights_only=True (no arbitrary unpickling, see loftup.io)."""
    state = load_weights_only(path, "training state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a loftup training-state file; resume only runs that loftup wrote")
    return state


class CsvLog:
    """Append-only CSV; on resume, rows after the resumed step are dropped (they were not saved)."""

    def __init__(self, path: Path, fields: list[str], resume_step: int | None = None):
        self.path, self.fields = Path(path), list(fields)
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
            self._rewrite(rows)
        elif not self.path.is_file() or resume_step is None:
            self._rewrite([])

    def _rewrite(self, rows: list[dict]) -> None:
        def write(p: Path) -> None:
            with open(p, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)

        atomic_write(self.path, write)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )


class TensorBoardLog:
    """SummaryWriter if the `tensorboard` package is importable, else a no-op (CSV still written)."""

    def __init__(self, logdir: Path):
        self.writer = None
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except Exception:
            return
        self.writer = SummaryWriter(str(logdir))

    @property
    def available(self) -> bool:
        return self.writer is not None

    def write(self, step: int, values: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and k != "step":
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar:
    """rich progress bar: steps, loss, images/s, ETA. Disabled -> no output at all."""

    def __init__(self, total: int, start: int, enabled: bool, description: str):
        self.progress = None
        self.t0, self.start = time.perf_counter(), start
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[ips]} img/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self.task = self.progress.add_task(description, total=total, completed=start, loss="-", ips="-")
        self.progress.start()

    def update(self, step: int, loss: float, ips: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=f"{loss:.4g}", ips=f"{ips:.2f}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
