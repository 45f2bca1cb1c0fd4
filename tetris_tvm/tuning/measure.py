"""Measuring and checking: where candidates run (here or over RPC), the numerical check
against the unscheduled kernel, and the choice of the record that replaces a default."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..schedules.pipeline import expand_marks, schedule_module
from .tasks import ArgumentFactory, KernelTask

__all__ = [
    "FLOAT_CHECK", "KEEP_MARGIN", "Checker", "CrossExport", "Device", "TaskResult",
    "TuningResult", "record_for", "scheduled_module", "select_record",
]

FLOAT_CHECK = {"rtol": 1e-4, "atol": 1e-4}
KEEP_MARGIN = 0.98  # a tuned kernel must be at least 2% faster than the default to replace it


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class TaskResult:
    """What tuning did for one task."""

    name: str
    kind: str
    weight: int
    trials: int
    default_us: float | None = None
    tuned_us: float | None = None
    verdict: str = "untuned"  # tuned | default (tuned not faster) | no-correct-record | untuned
    rejected: int = 0  # fastest records that failed the numerical check
    default_correct: bool = True  # the default schedule passed the same check

    @property
    def best_us(self) -> float | None:
        if self.verdict == "tuned":
            return self.tuned_us
        return self.default_us


@dataclass
class TuningResult:
    """The outcome of :func:`tune`: per-task results and where the records are."""

    path: Path
    tasks: list[TaskResult]
    seconds: float
    trials_this_run: int

    @property
    def default_us(self) -> float:
        """Weighted sum of the default kernels' latencies (a model's kernel time)."""
        return sum((t.default_us or 0.0) * t.weight for t in self.tasks)

    @property
    def tuned_us(self) -> float:
        """Weighted sum of the kept kernels' latencies (tuned where kept, else default)."""
        return sum((t.best_us or 0.0) * t.weight for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "seconds": self.seconds,
            "trials_this_run": self.trials_this_run,
            "default_us": self.default_us,
            "tuned_us": self.tuned_us,
            "tasks": [asdict(t) for t in self.tasks],
        }

    def format_table(self) -> str:
        head = f"{'task':<36} {'kind':<12} {'x':>3} {'trials':>6} {'default us':>11} " \
               f"{'tuned us':>10} {'speedup':>7}  verdict"
        lines = [head, "-" * len(head)]
        for t in self.tasks:
            tuned = f"{t.tuned_us:.1f}" if t.tuned_us is not None else "-"
            default = f"{t.default_us:.1f}" if t.default_us is not None else "-"
            speed = (
                f"{t.default_us / t.best_us:.2f}x" if t.default_us and t.best_us else "-"
            )
            verdict = t.verdict + (f" ({t.rejected} wrong rejected)" if t.rejected else "")
            if not t.default_correct:
                verdict += " (default schedule was WRONG)"
            lines.append(
                f"{t.name[:36]:<36} {t.kind:<12} {t.weight:>3} {t.trials:>6} {default:>11} "
                f"{tuned:>10} {speed:>7}  {verdict}"
            )
        if self.tuned_us:
            lines.append(
                f"kernel time (weighted): default {self.default_us / 1e3:.2f} ms -> "
                f"{self.tuned_us / 1e3:.2f} ms ({self.default_us / self.tuned_us:.2f}x); "
                f"{self.trials_this_run} trials in {self.seconds:.0f} s"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# where kernels run: this machine or an RPC device


class CrossExport:
    """MetaSchedule ``f_export`` that links each candidate with a cross compiler.

    For an RPC device of another architecture (an aarch64 board) that has no compiler of its
    own: ``tune(..., target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", ...},
    rpc="tracker:9190/board", cross_compiler="aarch64-linux-gnu-g++")``.  Pickles, so the
    builder's worker processes can call it.
    """

    def __init__(self, compiler: str, folder: str | None = None):
        self.compiler, self.folder = compiler, folder

    def __call__(self, mod: Any, name: str = "candidate") -> str:
        from tvm.support import cc

        folder = self.folder or tempfile.mkdtemp(prefix="tetris-tune-")
        path = os.path.join(folder, f"{name}.so")
        mod.export_library(path, fcompile=cc.cross_compiler(self.compiler))
        return path


class Device:
    """Loads a compiled kernel where it is measured (locally, or on an RPC tracker's device)."""

    def __init__(self, target: Any, rpc: tuple[str, int, str] | None, timeout: int = 60,
                 cross_compiler: str | None = None):
        import tvm

        self._tmp = tempfile.TemporaryDirectory(prefix="tetris-tune-")
        self.export = CrossExport(cross_compiler, self._tmp.name) if cross_compiler else None
        self.session = None
        kind = "cpu" if target.kind.name == "llvm" else target.kind.name
        if rpc is None:
            self.device = tvm.device(kind, 0)
        else:
            from tvm import rpc as tvm_rpc

            host, port, key = rpc
            tracker = tvm_rpc.connect_tracker(host, int(port))
            self.session = tracker.request(key, priority=1, session_timeout=timeout)
            self.device = self.session.device(kind, 0)

    def load(self, executable: Any, name: str) -> Any:
        if self.session is None:
            return executable.mod
        if self.export is not None:
            path = self.export(executable.mod, name)
        else:
            path = os.path.join(self._tmp.name, f"{name}.so")
            executable.export_library(path)
        self.session.upload(path)
        return self.session.load_module(f"{name}.so")

    def tensor(self, array: np.ndarray) -> Any:
        import tvm

        # np.asarray, not np.ascontiguousarray: the latter turns a 0-d array into 1-d
        return tvm.runtime.tensor(np.asarray(array, order="C"), self.device)


def scheduled_module(task: KernelTask, target: Any, trace: Any | None) -> Any:
    """``task``'s module with a tuning record's trace applied, or the default schedule."""
    from tvm import s_tir

    if trace is None:
        return schedule_module(task.mod, target)
    sch = s_tir.Schedule(task.mod)
    trace.apply_to_schedule(sch, remove_postproc=False)
    return expand_marks(sch.mod)


class Checker:
    """Builds, checks and times candidate schedules of one task on the measuring device."""

    def __init__(self, task: KernelTask, target: Any, device: Device, factory: ArgumentFactory):
        import tvm
        from tvm.s_tir import meta_schedule as ms

        self.task, self.target, self.device = task, target, device
        info = ms.arg_info.ArgInfo.from_prim_func(task.func)
        self.args = factory.numpy_args(info, seed=1)
        self.outputs = list(range(len(self.args) - task.num_outputs, len(self.args)))
        # the reference: the unscheduled kernel (correct by construction) on this CPU
        host = tvm.target.Target({"kind": "llvm"})
        ref = tvm.compile(task.mod, target=host)
        ref_args = [tvm.runtime.tensor(a.copy(), tvm.cpu()) for a in self.args]
        ref["main"](*ref_args)
        self.expected = {i: ref_args[i].numpy() for i in self.outputs}
        self._count = 0

    def build(self, trace: Any | None) -> Any:
        import tvm

        mod = scheduled_module(self.task, self.target, trace)
        self._count += 1
        return self.device.load(tvm.compile(mod, target=self.target), f"k{self._count}")

    def check(self, lib: Any) -> bool:
        """Outputs start as NaN, so a candidate that skips part of an output fails too."""
        args = []
        for i, a in enumerate(self.args):
            if i in self.outputs and a.dtype.kind == "f":
                args.append(self.device.tensor(np.full_like(a, np.nan)))
            else:
                args.append(self.device.tensor(a))
        lib["main"](*args)
        for i in self.outputs:
            got, want = args[i].numpy(), self.expected[i]
            scale = float(np.max(np.abs(want))) if want.size else 0.0
            tol = {"rtol": FLOAT_CHECK["rtol"], "atol": FLOAT_CHECK["atol"] * max(1.0, scale)}
            if got.shape != want.shape or not np.allclose(got, want, **tol):
                return False
        return True

    def sampler(self, lib: Any) -> Callable[[], float]:
        args = [self.device.tensor(a) for a in self.args]
        evaluator = lib.time_evaluator("main", self.device.device, number=5, repeat=1,
                                       min_repeat_ms=20)
        return lambda: float(evaluator(*args).mean)


def select_record(checker: Checker, raw: Any, selected: Any, top_k: int, trials: int) -> TaskResult:
    """Check the task's fastest records; keep the first correct one if it beats the default."""
    from ..bench import median_interleaved

    task = checker.task
    result = TaskResult(task.name, task.kind, task.weight, trials)
    default = checker.build(None)
    result.default_correct = checker.check(default)
    if not result.default_correct:  # then any correct record wins, whatever its speed
        warnings.warn(f"{task.name}: the default schedule disagrees with the unscheduled "
                      "kernel; a correct tuned record replaces it", stacklevel=2)
    workload = raw.commit_workload(task.mod)
    best = None
    for record in raw.get_top_k(workload, top_k):
        try:
            lib = checker.build(record.trace)
        except Exception:  # noqa: BLE001 - a record that no longer builds is skipped
            result.rejected += 1
            continue
        if checker.check(lib):
            best = (record, lib)
            break
        result.rejected += 1
    samplers = {"default": checker.sampler(default)}
    if best is not None:
        samplers["tuned"] = checker.sampler(best[1])
    times = median_interleaved(samplers, repeats=5)
    result.default_us = times["default"] * 1e6
    if best is None:
        result.verdict = "no-correct-record" if trials else "untuned"
        return result
    result.tuned_us = times["tuned"] * 1e6
    if times["tuned"] < KEEP_MARGIN * times["default"] or not result.default_correct:
        selected.commit_tuning_record(
            record_for(best[0], selected.commit_workload(task.mod))
        )
        result.verdict = "tuned"
    else:
        result.verdict = "default"
    return result


def record_for(record: Any, workload: Any) -> Any:
    from tvm.s_tir import meta_schedule as ms

    return ms.database.TuningRecord(
        record.trace, workload, record.run_secs, record.target, record.args_info
    )


