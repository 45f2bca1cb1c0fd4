"""``tetris_tvm.tune``: MetaSchedule tuning of every kernel of a compiled model.

One run tunes the block-sparse kernels (our design spaces, :mod:`.schedules.cpu.space`) and the
dense ones (MetaSchedule's generic rules) under one trial budget with the XGBoost cost model.
Afterwards each task's fastest records are checked against the unscheduled kernel on random
valid inputs, and the first correct one is kept only if it beats the default schedule, timed in
the same process.  ``compile(..., tuning=work_dir)`` applies only those kept records.

Work directory layout (one subfolder per target, so a CPU database never reaches a CUDA build)::

    work_dir/
      <target-key>/
        target.json                     the target the records were measured on
        database_workload.json          every workload measured (MetaSchedule JSON database,
        database_tuning_record.json     appended as measured: an interrupted run keeps them)
        selected_workload.json          the checked records that beat the defaults:
        selected_tuning_record.json     what compile() applies
        summary.json                    per task: trials, default / tuned latency, verdict
        logs/                           MetaSchedule's own logs
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ArgumentFactory",
    "CrossExport",
    "KernelTask",
    "TaskResult",
    "TuningDirectory",
    "TuningResult",
    "apply_tuning",
    "tasks_from_module",
    "tune",
    "tune_tasks",
]

_FLOAT_CHECK = {"rtol": 1e-4, "atol": 1e-4}
_KEEP_MARGIN = 0.98  # a tuned kernel must be at least 2% faster than the default to replace it


# ---------------------------------------------------------------------------------------------
# arguments: valid index arrays for the block-sparse kernels


def signature(args_info: Sequence[Any]) -> str:
    """A key for a kernel's parameter list: dtypes and shapes, as MetaSchedule's runner sees it."""
    rows = []
    for info in args_info:
        obj = info.as_json() if hasattr(info, "as_json") else info
        rows.append([str(obj[1]), [int(d) for d in obj[2]]])
    return json.dumps(rows)


class ArgumentFactory:
    """Inputs for measuring and checking kernels: random floats, VALID index arrays.

    MetaSchedule's default runner fills integer parameters with random values; for a BSR
    kernel those are column indices and row pointers, and a candidate run on them reads out of
    bounds.  Here integer parameters take the real index arrays of the model's weights (looked
    up by the kernel's :func:`signature`) or zeros (valid for any gather).  Instances pickle, so
    MetaSchedule's worker processes (``LocalRunner``) and RPC runner can call them.
    """

    def __init__(self, index_args: Mapping[str, Mapping[int, np.ndarray]], rpc: bool = False):
        self.index_args = {k: dict(v) for k, v in index_args.items()}
        self.rpc = rpc

    def numpy_args(self, args_info: Sequence[Any], seed: int = 0) -> list[np.ndarray]:
        """One set of arguments as numpy arrays."""
        rng = np.random.default_rng(seed)
        fixed = self.index_args.get(signature(args_info), {})
        arrays = []
        for i, info in enumerate(args_info):
            obj = info.as_json() if hasattr(info, "as_json") else info
            dtype, shape = str(obj[1]), [int(d) for d in obj[2]]
            if i in fixed:
                arrays.append(np.asarray(fixed[i]))
            elif dtype.startswith(("float", "bfloat")):
                arrays.append(rng.uniform(-1.0, 1.0, shape).astype(dtype))
            else:
                arrays.append(np.zeros(shape, dtype))
        return arrays

    def __call__(self, *args: Any) -> list[list[Any]]:
        """MetaSchedule's ``f_alloc_argument``: ``(device, args_info, repeat)`` (local runner)
        or ``(session, device, args_info, repeat)`` (RPC runner)."""
        import tvm

        device, args_info, repeat = args[-3:]
        return [
            [tvm.runtime.tensor(a, device) for a in self.numpy_args(args_info, seed)]
            for seed in range(repeat)
        ]


# ---------------------------------------------------------------------------------------------
# tasks


@dataclass
class KernelTask:
    """One kernel to tune: its unscheduled PrimFunc, weight (calls per run) and index args."""

    name: str
    func: Any
    weight: int = 1
    index_args: dict[int, np.ndarray] = field(default_factory=dict)
    num_outputs: int = 1  # the last parameters (destination-passing style)

    @property
    def mod(self) -> Any:
        import tvm

        return tvm.IRModule({"main": self.func})

    @property
    def kind(self) -> str:
        from .schedules.cpu._common import kernel_kind

        return kernel_kind(self.func) or "dense-op"

    @property
    def signature(self) -> str:
        from tvm.s_tir import meta_schedule as ms

        return signature(ms.arg_info.ArgInfo.from_prim_func(self.func))


def tasks_from_module(mod: Any, target: Any) -> list[KernelTask]:
    """The tuning tasks of a lowered Relax module (one per distinct PrimFunc).

    Kernels that share a PrimFunc (e.g. the query/key/value projections of a layer, whose
    weights differ only in values) are one task, named after the first of them; the index
    arrays of that kernel's call are the ones measured.
    """
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    call_tir = tvm.ir.Op.get("relax.call_tir")
    index_by_callee: dict[str, dict[int, np.ndarray]] = {}
    outputs_by_callee: dict[str, int] = {}

    def visit(expr: Any) -> None:
        if not (isinstance(expr, relax.Call) and expr.op.same_as(call_tir)):
            return
        fixed = {}
        for i, arg in enumerate(expr.args[1].fields):
            value = getattr(arg, "value", None)
            if isinstance(value, tvm.runtime.Tensor) and value.dtype.startswith(("int", "uint")):
                fixed[i] = value.numpy()
        callee = expr.args[0].name_hint
        index_by_callee.setdefault(callee, fixed)
        out = expr.ty_args[0]
        outputs_by_callee[callee] = len(out.fields) if isinstance(out, relax.TupleType) else 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return [
        KernelTask(t.task_name, t.mod["main"], int(t.weight), index_by_callee.get(t.task_name, {}),
                   outputs_by_callee.get(t.task_name, 1))
        for t in ms.relax_integration.extract_tasks(mod, target)
    ]


# ---------------------------------------------------------------------------------------------
# the work directory


def target_spec(target: Any) -> dict[str, Any]:
    """``target`` as a plain JSON-able dict."""

    def plain(v: Any) -> Any:
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if hasattr(v, "items"):
            return {str(k): plain(x) for k, x in v.items()}
        if hasattr(v, "__iter__"):
            return [plain(x) for x in v]
        return str(v)

    return plain(target.export())


def target_key(target: Any) -> str:
    """Folder name for ``target``'s records: kind, CPU / arch, and a hash of the whole target."""
    spec = target_spec(target)
    text = json.dumps(spec, sort_keys=True, default=str)
    detail = str(spec.get("mcpu") or spec.get("arch") or spec.get("mtriple") or "generic")
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", f"{target.kind.name}-{detail}")
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


class TuningDirectory:
    """One target's records inside a tuning work directory (layout in the module docstring)."""

    RAW = ("database_workload.json", "database_tuning_record.json")
    SELECTED = ("selected_workload.json", "selected_tuning_record.json")

    def __init__(self, work_dir: str | os.PathLike[str], target: Any):
        self.work_dir = Path(work_dir)
        self.target = target
        self.path = self.work_dir / target_key(target)

    def create(self) -> TuningDirectory:
        self.path.mkdir(parents=True, exist_ok=True)
        target_file = self.path / "target.json"
        if not target_file.exists():
            target_file.write_text(json.dumps(target_spec(self.target), indent=1))
        return self

    def targets(self) -> list[str]:
        """The targets this work directory has records for (as written in target.json)."""
        found = []
        for tf in sorted(self.work_dir.glob("*/target.json")):
            try:
                spec = json.loads(tf.read_text())
                detail = spec.get("mcpu") or spec.get("arch") or ""
                found.append(f"{tf.parent.name}: {spec.get('kind')} {detail}".strip())
            except (OSError, ValueError):
                found.append(f"{tf.parent.name}: (unreadable target.json)")
        return found

    def _database(self, names: tuple[str, str], allow_missing: bool) -> Any:
        from tvm.s_tir import meta_schedule as ms

        paths = [self.path / n for n in names]
        for p in paths:
            if p.exists():
                _drop_truncated_tail(p)
        try:
            return ms.database.JSONDatabase(
                path_workload=str(paths[0]), path_tuning_record=str(paths[1]),
                allow_missing=allow_missing,
            )
        except Exception as err:  # noqa: BLE001 - TVM raises several types for a bad file
            raise ValueError(
                f"corrupt tuning database {paths[0]} / {paths[1]}: {err}. Delete the folder "
                f"{self.path} to tune again from scratch."
            ) from None

    def raw_database(self) -> Any:
        """Every record measured so far (created empty when missing)."""
        return self._database(self.RAW, allow_missing=True)

    def selected_database(self, fresh: bool = False) -> Any:
        """The checked records compile() applies; ``fresh`` starts it empty."""
        if fresh:
            for n in self.SELECTED:
                (self.path / n).unlink(missing_ok=True)
        return self._database(self.SELECTED, allow_missing=True)

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def read_summary(self) -> dict[str, Any]:
        try:
            return json.loads(self.summary_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise ValueError(f"corrupt tuning summary {self.summary_path}: {err}") from None


def _drop_truncated_tail(path: Path) -> None:
    """Repair a JSON-lines database whose last line an interrupted run left half-written.

    Any other unparsable line is corruption and raises ``ValueError`` naming the file.
    """
    lines = path.read_text().splitlines()
    bad = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            bad.append(i)
    if not bad:
        return
    if bad == [len(lines) - 1]:
        warnings.warn(f"{path}: dropped a half-written last record (interrupted run)",
                      stacklevel=3)
        path.write_text("".join(line + "\n" for line in lines[:-1]))
        return
    raise ValueError(
        f"corrupt tuning database {path}: line {bad[0] + 1} is not a JSON record"
    )


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


class _Device:
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


def _scheduled(task: KernelTask, target: Any, trace: Any | None) -> Any:
    """``task``'s module with a tuning record's trace applied, or the default schedule."""
    from tvm import s_tir
    from tvm.s_tir import dlight as dl

    from .compiler import default_rules
    from .schedules.cpu import ExpandOperandPrefetch

    if trace is None:
        with target:
            mod = dl.ApplyDefaultSchedule(*default_rules(target))(task.mod)
    else:
        sch = s_tir.Schedule(task.mod)
        trace.apply_to_schedule(sch, remove_postproc=False)
        mod = sch.mod
    return ExpandOperandPrefetch()(mod)


class _Checker:
    """Builds, checks and times candidate schedules of one task on the measuring device."""

    def __init__(self, task: KernelTask, target: Any, device: _Device, factory: ArgumentFactory):
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

        mod = _scheduled(self.task, self.target, trace)
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
            tol = {"rtol": _FLOAT_CHECK["rtol"], "atol": _FLOAT_CHECK["atol"] * max(1.0, scale)}
            if got.shape != want.shape or not np.allclose(got, want, **tol):
                return False
        return True

    def sampler(self, lib: Any) -> Callable[[], float]:
        args = [self.device.tensor(a) for a in self.args]
        evaluator = lib.time_evaluator("main", self.device.device, number=5, repeat=1,
                                       min_repeat_ms=20)
        return lambda: float(evaluator(*args).mean)


def _select(checker: _Checker, raw: Any, selected: Any, top_k: int, trials: int) -> TaskResult:
    """Check the task's fastest records; keep the first correct one if it beats the default."""
    from .bench import median_interleaved

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
    if times["tuned"] < _KEEP_MARGIN * times["default"] or not result.default_correct:
        selected.commit_tuning_record(
            _record_for(best[0], selected.commit_workload(task.mod))
        )
        result.verdict = "tuned"
    else:
        result.verdict = "default"
    return result


def _record_for(record: Any, workload: Any) -> Any:
    from tvm.s_tir import meta_schedule as ms

    return ms.database.TuningRecord(
        record.trace, workload, record.run_secs, record.target, record.args_info
    )


# ---------------------------------------------------------------------------------------------
# progress


class _TuningStopped(Exception):
    """Raised by the progress callback to end a run the user interrupted."""


class _StopOnCtrlC:
    """While active, Ctrl-C asks the tuning loop to stop between two batches.

    A KeyboardInterrupt raised inside MetaSchedule's C++ loop aborted the whole process
    (std::terminate); stopping between batches keeps the process and every record.  Python
    runs a signal handler only when the main thread executes Python code, and MetaSchedule's
    search can stay in C++ for minutes on a loaded machine (seen: no reaction in 6 min), so
    the signal is read by a watcher thread through ``signal.set_wakeup_fd`` instead: the
    first Ctrl-C is acknowledged at once and the run stops at the next Python callback
    (build, predict, measured batch); a second Ctrl-C ends the process at once, keeping the
    records already written (each is appended to the database when measured).  LLVM code in
    the process briefly installs its own SIGINT handler (measured: 5 of 120 signals sent during
    a run were lost); pressing again is the remedy (it counts as the first).
    """

    def __init__(self, work_dir: Path | str | None = None) -> None:
        self.requested = False
        self.work_dir = work_dir
        self._previous: Any = None
        self._previous_fd = -1
        self._pipe: tuple[int, int] | None = None
        self._thread: Any = None

    def _on_signal(self) -> None:
        if self.requested:
            where = f" in {self.work_dir}" if self.work_dir else ""
            print(f"\nCtrl-C again: aborted; the records measured so far are kept{where}",
                  flush=True)
            os._exit(130)
        self.requested = True
        print("\nCtrl-C: stopping before the next batch (again to abort)", flush=True)

    def _watch(self, read_fd: int) -> None:
        import signal

        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:  # the write end was closed: the run is over
                return
            for byte in data:
                if byte == signal.SIGINT:
                    self._on_signal()

    def __enter__(self) -> _StopOnCtrlC:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        # Python's own handler must not raise KeyboardInterrupt (it would end the C++ loop);
        # the watcher does the work.
        self._previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
        self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                                        name="tetris-tvm-ctrl-c")
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        import signal

        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        signal.signal(signal.SIGINT, self._previous)
        read_fd, write_fd = self._pipe
        os.close(write_fd)
        self._thread.join(timeout=5)
        os.close(read_fd)
        self._pipe = None


def _builder(timeout: int, cross_compiler: str | None, stop: _StopOnCtrlC) -> Any:
    """MetaSchedule's LocalBuilder work on a pool of build workers that lives for the run.

    LocalBuilder starts a fresh pool for every batch (a guard against a leak in long runs);
    here a worker's start (importing TVM and its tensor intrinsics) cost about 5 s per batch,
    more than building the batch, and a model has one batch per kernel before anything is
    measured.  Also where a Ctrl-C ends the run: before building the next batch.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import local_builder as lb
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    from .schedules.cpu import ExpandOperandPrefetch

    f_export = CrossExport(cross_compiler) if cross_compiler else None

    @derived_object
    class PersistentBuilder(ms.builder.PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool = PopenPoolExecutor(
                max_workers=len(os.sched_getaffinity(0)), timeout=timeout,
                initializer=_import_tensor_intrinsics,
            )

        def build(self, build_inputs: list[Any]) -> list[Any]:
            if stop.requested:
                raise _TuningStopped
            expand = ExpandOperandPrefetch()  # what tetris_tvm.compile builds, too
            jobs = [(None, f_export, expand(b.mod), b.target, None) for b in build_inputs]
            results = []
            for res in self.pool.map_with_error_catching(lambda x: lb._worker_func(*x), jobs):
                if res.status == StatusKind.COMPLETE:
                    results.append(ms.builder.BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    results.append(ms.builder.BuilderResult(None, f"build timeout {timeout} s"))
                else:
                    results.append(ms.builder.BuilderResult(None, f"build error: {res.value}"))
            return results

    return PersistentBuilder()


def _cost_model(stop: _StopOnCtrlC) -> Any:
    """MetaSchedule's XGBoost cost model, which also ends the run on Ctrl-C.

    The evolutionary search between two batches calls ``predict`` many times and can take
    minutes on a loaded machine (seen: over 6 min after a Ctrl-C in a full test run); the
    builder and the progress callback alone noticed the Ctrl-C only after it.
    """
    import os

    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    inner = ms.cost_model.XGBModel(num_tuning_cores=len(os.sched_getaffinity(0)),
                                   tree_method="auto")

    @derived_object
    class StoppableXGB(ms.cost_model.PyCostModel):
        def load(self, path: str) -> None:
            inner.load(path)

        def save(self, path: str) -> None:
            inner.save(path)

        def update(self, context, candidates, results) -> None:
            inner.update(context, candidates, results)

        def predict(self, context, candidates) -> np.ndarray:
            if stop.requested:
                raise _TuningStopped
            return inner.predict(context, candidates)

    return StoppableXGB()


def _progress_callback(
    contexts: Sequence[Any], total: int, enabled: bool, stop: _StopOnCtrlC
) -> Any:
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        """tqdm bar: trials measured, the task being tuned and its best latency so far.

        Also where a Ctrl-C takes effect: raising here, in the loop's own thread between
        batches, unwinds MetaSchedule cleanly (marking tasks terminated tripped its checks).
        """

        def __init__(self) -> None:
            from tqdm.auto import tqdm

            self.best: dict[int, float] = {}
            self.bar = tqdm(total=total, unit="trial", desc="tuning", disable=not enabled)

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results) -> None:
            if stop.requested:  # this batch is in the database already (callbacks before us)
                raise _TuningStopped
            for res in runner_results:
                if res.run_secs:
                    secs = float(np.mean([float(s) for s in res.run_secs]))
                    self.best[task_id] = min(self.best.get(task_id, np.inf), secs)
            name = contexts[task_id].task_name
            best = self.best.get(task_id)
            self.bar.set_postfix_str(
                f"{name[:28]} best {best * 1e6:.1f} us" if best else f"{name[:28]}"
            )
            self.bar.update(len(measure_candidates))

    return Progress()


# ---------------------------------------------------------------------------------------------
# tuning


def _import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` (every TuneContext does) without the 30 s it costs.

    Its ~250 TVMScript functions each call ``inspect.stack()``, which resolves a module for
    every frame whose file does not exist (the import machinery's frozen frames) by scanning
    all of ``sys.modules``: with torch loaded, over 30 s here.  The parser only uses the
    frames, so during this import ``inspect.stack`` returns them without source lookups.
    """
    import inspect
    import sys

    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return

    def frames_only(context: int = 1) -> list[inspect.FrameInfo]:
        frame, out = sys._getframe(1), []
        while frame is not None:
            code = frame.f_code
            out.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno,
                                         code.co_name, None, None))
            frame = frame.f_back
        return out

    original = inspect.stack
    inspect.stack = frames_only
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack = original


def _space(task: KernelTask, target: Any) -> Any:
    """Our design spaces for tetris kernels (CPU and CUDA), MetaSchedule's generic rules for
    dense ops; None (not tuned, the default schedule stays) for tetris kernels on other
    targets, whose indptr-bounded loops the generic rules cannot schedule."""
    from tvm.s_tir import meta_schedule as ms

    if task.kind == "dense-op":
        return "post-order-apply"
    design_spaces = _design_spaces(target)
    if design_spaces is None:
        return None
    return ms.space_generator.ScheduleFn(
        lambda sch: design_spaces(sch, target), sch_rules=[], postprocs=[], mutator_probs={}
    )


def _design_spaces(target: Any) -> Any:
    if target.kind.name == "llvm":
        from .schedules.cpu.space import design_spaces

        return design_spaces
    if target.kind.name == "cuda":
        from .schedules.cuda.space import design_spaces

        return design_spaces
    return None


def _space_size(task: KernelTask, target: Any) -> int:
    """Distinct candidates in our design space for ``task`` (a large number for the rest)."""
    design_spaces = _design_spaces(target)
    if task.kind == "dense-op" or design_spaces is None:
        return 1 << 30
    from tvm import s_tir

    from .schedules.cpu.space import UNROLL_STEPS

    spaces = design_spaces(s_tir.Schedule(task.mod), target) or []
    return sum(len(UNROLL_STEPS) if s.trace.decisions else 1 for s in spaces)


def _records_per_task(raw: Any, tasks: Sequence[KernelTask]) -> list[int]:
    import tvm_ffi

    counts: dict[int, int] = {}
    for rec in raw.get_all_tuning_records():
        h = tvm_ffi.structural_hash(rec.workload.mod)
        counts[h] = counts.get(h, 0) + 1
    return [counts.get(tvm_ffi.structural_hash(raw.commit_workload(t.mod).mod), 0) for t in tasks]


def tune_tasks(
    tasks: Sequence[KernelTask],
    target: Any,
    work_dir: str | os.PathLike[str],
    trials: int = 64,
    *,
    max_trials_global: int | None = None,
    rpc: tuple[str, int, str] | None = None,
    timeout: int = 30,
    top_k: int = 8,
    progress: bool = True,
    cross_compiler: str | None = None,
) -> TuningResult:
    """Tune ``tasks`` for ``target`` into ``work_dir`` (see :func:`tune`)."""
    from tvm.s_tir import meta_schedule as ms

    from .compiler import resolve_target

    if int(trials) < 0:
        raise ValueError(f"trials must be >= 0, got {trials}")
    target = resolve_target(target)
    if rpc is not None:
        rpc = _check_rpc(rpc)
    elif target.kind.name != "llvm":
        _require_local_device(target)
    tdir = TuningDirectory(work_dir, target).create()
    raw = tdir.raw_database()
    done = _records_per_task(raw, tasks)
    spaces = [_space(t, target) for t in tasks]
    # a search space smaller than the budget is covered once, not sampled again and again
    wanted = [min(int(trials), _space_size(t, target)) for t in tasks]
    left = [max(0, w - d) for w, d in zip(wanted, done, strict=True)]
    budget = sum(left) if max_trials_global is None else min(int(max_trials_global), sum(left))
    index = {t.signature: t.index_args for t in tasks}
    started = time.perf_counter()
    active = [i for i, n in enumerate(left) if n > 0 and spaces[i] is not None]
    if budget > 0 and active:
        _import_tensor_intrinsics()
        contexts = [
            ms.TuneContext(
                tasks[i].mod, target=target, space_generator=spaces[i],
                search_strategy="evolutionary", task_name=tasks[i].name,
            )
            for i in active
        ]
        runner = _runner(rpc, ArgumentFactory(index, rpc=rpc is not None), timeout)
        stop = _StopOnCtrlC(tdir.path)
        callbacks = [*ms.measure_callback.MeasureCallback.create("default"),
                     _progress_callback(contexts, budget, progress, stop)]
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        with stop:
            try:
                ms.tune_tasks(
                    tasks=contexts, task_weights=[float(tasks[i].weight) for i in active],
                    work_dir=str(tdir.path), max_trials_global=budget,
                    max_trials_per_task=max(left[i] for i in active),
                    num_trials_per_iter=min(16, max(left)),
                    builder=_builder(timeout, cross_compiler, stop),
                    runner=runner,
                    database=raw, cost_model=_cost_model(stop), measure_callbacks=callbacks,
                    task_scheduler="gradient",
                )
            except Exception:
                if not stop.requested:
                    raise
            finally:
                callbacks[-1].bar.close()
        if stop.requested:
            print(f"interrupted: the records measured so far are in {tdir.path}; "
                  "run the same command again to resume", flush=True)
            raise KeyboardInterrupt
    measured = _records_per_task(raw, tasks)
    device = _Device(target, rpc, timeout=max(60, timeout), cross_compiler=cross_compiler)
    selected = tdir.selected_database(fresh=True)
    factory = ArgumentFactory(index)
    results = [
        _select(_Checker(task, target, device, factory), raw, selected, top_k, n)
        for task, n in zip(tasks, measured, strict=True)
    ]
    seconds = time.perf_counter() - started
    result = TuningResult(tdir.path, results, seconds, sum(measured) - sum(done))
    tdir.summary_path.write_text(json.dumps(result.to_dict(), indent=1, default=str))
    return result


def _runner(rpc: tuple[str, int, str] | None, factory: ArgumentFactory, timeout: int) -> Any:
    """MetaSchedule's local runner, or its RPC runner for a tracker's device."""
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20,
                                          enable_cpu_cache_flush=False)
    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=timeout,
                                     f_alloc_argument=factory)
    host, port, key = rpc
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_timeout_sec=timeout)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                               f_alloc_argument=factory)


def _check_rpc(rpc: Any) -> tuple[str, int, str]:
    if isinstance(rpc, str):
        try:
            addr, key = rpc.rsplit("/", 1) if "/" in rpc else (rpc, "")
            host, port = addr.rsplit(":", 1)
            rpc = (host, int(port), key)
        except ValueError:
            raise ValueError(f"rpc must be 'host:port/key', got {rpc!r}") from None
    host, port, key = rpc
    if not key:
        raise ValueError("rpc needs a device key (the --key the RPC server registered with)")
    return str(host), int(port), str(key)


def _require_local_device(target: Any) -> None:
    import tvm

    if not tvm.device(target.kind.name, 0).exist:  # e.g. "cuda" without a GPU
        raise ValueError(
            f"tuning for {target.kind.name} needs that device here or an RPC tracker "
            "(rpc='host:port/key'); none was found on this machine"
        )


def tune(
    model: Any,
    example_inputs: Sequence[Any] | Any,
    target: Any = "llvm",
    *,
    work_dir: str | os.PathLike[str],
    trials: int = 64,
    sparsity: float = 0.75,
    block_size: int | tuple[int, int] = (32, 32),
    plan: Any = None,
    max_trials_global: int | None = None,
    rpc: str | tuple[str, int, str] | None = None,
    timeout: int = 30,
    progress: bool = True,
    cross_compiler: str | None = None,
    **compile_options: Any,
) -> TuningResult:
    """Tune every kernel of ``model`` compiled as :func:`tetris_tvm.compile` would compile it.

    Block-sparse kernels are searched over our schedule space, dense ones over MetaSchedule's
    generic space, all in one MetaSchedule run with the XGBoost cost model and a progress bar.
    Then each task's fastest records are checked numerically against the unscheduled kernel
    and the first correct one is kept only where it beats the default schedule (timed here,
    interleaved).  Compile with ``tetris_tvm.compile(..., tuning=work_dir)``.

    Args:
        model, example_inputs, target, sparsity, block_size, plan: as for ``compile``; pass
            the same values (or the same ``plan``) when compiling so the kernels match.
        work_dir: where records live; reused across runs, one subfolder per target.  A rerun
            resumes: tasks that already have ``trials`` records are not tuned again.
        trials: measured candidates per task.
        max_trials_global: cap on the trials of this run (default: ``trials`` x tasks).
        rpc: ``"host:port/key"`` of an RPC tracker whose server measures (an edge board, or a
            GPU machine); default: measure on this machine.
        timeout: seconds allowed to build or run one candidate.
        progress: show a progress bar.
        cross_compiler: link candidates with this compiler (e.g. ``aarch64-linux-gnu-g++``)
            for an RPC device of another architecture that cannot link them itself.
        compile_options: other keyword arguments of ``compile`` (overrides, prune_options...).

    Returns:
        a :class:`TuningResult` (``format_table()`` prints default vs tuned per task).
    """
    from .compiler import lower_model

    if compile_options.get("dynamic_batch"):
        raise ValueError(
            "tune() measures kernels at fixed shapes: tune without dynamic_batch, at the "
            "batch size you deploy (a dynamic-batch build uses the default schedules)"
        )
    lowered = lower_model(model, example_inputs, target, sparsity, block_size, plan,
                          **compile_options)
    tasks = tasks_from_module(lowered.mod, lowered.target)
    return tune_tasks(tasks, lowered.target, work_dir, trials,
                      max_trials_global=max_trials_global, rpc=rpc, timeout=timeout,
                      progress=progress, cross_compiler=cross_compiler)


# ---------------------------------------------------------------------------------------------
# applying


def apply_tuning(
    mod: Any, target: Any, work_dir: str | os.PathLike[str], fallback: bool = False
) -> tuple[Any, int]:
    """Schedule the kernels of ``mod`` that ``work_dir`` has checked records for.

    Returns the module and how many kernels took a tuned schedule.  A work directory without
    records for ``target``, or whose tasks are none of this model's kernels, is a ValueError
    (with ``fallback=True``: a warning, and the default schedules are used).
    """
    import tvm_ffi
    from tvm import relax, tirx

    tdir = TuningDirectory(work_dir, target)

    def refuse(message: str) -> tuple[Any, int]:
        if fallback:
            warnings.warn(message + "; using the default schedules", stacklevel=3)
            return mod, 0
        raise ValueError(message + " (pass tuning_fallback=True to compile anyway)")

    if not Path(work_dir).is_dir():
        return refuse(f"tuning work directory {work_dir} does not exist")
    if not tdir.summary_path.exists():
        have = tdir.targets()
        return refuse(
            f"{work_dir} has no tuning results for target {json.dumps(target_spec(target))}"
            + (f"; it has: {'; '.join(have)}" if have else "")
        )
    tdir.read_summary()  # a clear error if it is corrupt
    kernels = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}

    def apply(database: Any) -> tuple[Any, int]:
        with target, database:
            out = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        changed = sum(1 for n, f in kernels.items() if not tvm_ffi.structural_equal(out[n], f))
        return out, changed

    # every measured workload (checked or not) tells whether this model was tuned here at all
    _, covered = apply(tdir.raw_database())
    if covered == 0:
        return refuse(
            f"{tdir.path} was tuned for other kernels than this model's; tune this model "
            "(same sparsity / block size / plan) first"
        )
    out, tuned = apply(tdir.selected_database())
    return out, tuned
