"""The search: MetaSchedule over every task of a model, one trial budget, XGBoost."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._compat import import_tensor_intrinsics
from ..schedules.database import TuningDirectory
from ..schedules.pipeline import expand_marks, space_size, tuning_rule, tuning_space
from ..schedules.targets import resolve_target
from .interrupt import StopOnCtrlC, TuningStopped
from .measure import Checker, CrossExport, Device, TuningResult, select_record
from .tasks import ArgumentFactory, KernelTask, tasks_from_module

__all__ = ["tune", "tune_tasks"]


def _builder(timeout: int, cross_compiler: str | None, stop: StopOnCtrlC) -> Any:
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

    f_export = CrossExport(cross_compiler) if cross_compiler else None

    @derived_object
    class PersistentBuilder(ms.builder.PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.pool = PopenPoolExecutor(
                max_workers=len(os.sched_getaffinity(0)), timeout=timeout,
                initializer=import_tensor_intrinsics,
            )

        def build(self, build_inputs: list[Any]) -> list[Any]:
            if stop.requested:
                raise TuningStopped
            # expanded as tetris_tvm.compile builds them, too
            jobs = [(None, f_export, expand_marks(b.mod), b.target, None) for b in build_inputs]
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


def _cost_model(stop: StopOnCtrlC) -> Any:
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
                raise TuningStopped
            return inner.predict(context, candidates)

    return StoppableXGB()


def _progress_callback(
    contexts: Sequence[Any], total: int, enabled: bool, stop: StopOnCtrlC
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
                raise TuningStopped
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


def _space(task: KernelTask, target: Any) -> Any:
    """The design spaces the schedule rules offer for a tetris kernel, MetaSchedule's generic
    rules for dense ops; None (not tuned, the default schedule stays) for a tetris kernel no
    rule offers a space for, whose indptr-bounded loops the generic rules cannot schedule."""
    from tvm.s_tir import meta_schedule as ms

    if task.kind == "dense-op":
        return "post-order-apply"
    if tuning_rule(task.mod["main"], target) is None:
        return None
    return ms.space_generator.ScheduleFn(
        lambda sch: tuning_space(sch, target), sch_rules=[], postprocs=[], mutator_probs={}
    )


def _space_size(task: KernelTask, target: Any) -> int:
    """Distinct candidates in our design space for ``task`` (a large number for the rest)."""
    from tvm import s_tir

    spaces = None if task.kind == "dense-op" else tuning_space(s_tir.Schedule(task.mod), target)
    return 1 << 30 if spaces is None else space_size(spaces)


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
        import_tensor_intrinsics()
        contexts = [
            ms.TuneContext(
                tasks[i].mod, target=target, space_generator=spaces[i],
                search_strategy="evolutionary", task_name=tasks[i].name,
            )
            for i in active
        ]
        runner = _runner(rpc, ArgumentFactory(index, rpc=rpc is not None), timeout)
        stop = StopOnCtrlC(tdir.path)
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
    device = Device(target, rpc, timeout=max(60, timeout), cross_compiler=cross_compiler)
    selected = tdir.selected_database(fresh=True)
    factory = ArgumentFactory(index)
    results = [
        select_record(Checker(task, target, device, factory), raw, selected, top_k, n)
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
    example_inputs: Sequence[Any] | Any = None,
    target: Any = "llvm",
    *,
    work_dir: str | os.PathLike[str],
    trials: int = 64,
    sparsity: float | None = None,
    block_size: int | tuple[int, int] | None = None,
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
            the same values (or the same ``plan``) when compiling so the kernels match. Or
            ``model`` is what :func:`tetris_tvm.lower` returned (nothing else then): tune it
            and build that same lowered model with ``tetris_tvm.build(lowered,
            tuning=work_dir)``.
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
    from ..compiler import LoweredModel, lower_model

    dynamic = compile_options.get("dynamic_batch") or isinstance(model, LoweredModel) and any(
        d is None for spec in model.meta.get("inputs", []) for d in spec.get("shape") or ())
    if dynamic:
        raise ValueError(
            "tune() measures kernels at fixed shapes: tune without dynamic_batch, at the "
            "batch size you deploy (a dynamic-batch build uses the default schedules)"
        )
    if isinstance(model, LoweredModel):
        if example_inputs is not None or sparsity is not None or block_size is not None \
                or plan is not None or compile_options:
            raise ValueError("tune: a lowered model already fixes its inputs, plan and "
                             "options; pass only the tuning arguments with it")
        lowered = model
    else:
        if example_inputs is None:
            raise ValueError("tune: pass example_inputs with a model (or tune a "
                             "tetris_tvm.lower result)")
        lowered = lower_model(model, example_inputs, target, sparsity, block_size, plan,
                              **compile_options)
    tasks = tasks_from_module(lowered.mod, lowered.target)
    return tune_tasks(tasks, lowered.target, work_dir, trials,
                      max_trials_global=max_trials_global, rpc=rpc, timeout=timeout,
                      progress=progress, cross_compiler=cross_compiler)


