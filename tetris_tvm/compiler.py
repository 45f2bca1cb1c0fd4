"""``tetris_tvm.compile``: torch model -> pruned, block-sparse TVM module; export and load.

Pipeline (design.md)::

    torch.export -> Relax (weights as named params)
      -> plan_graph + TetrisPrune -> bind weights -> FoldPermutations -> LowerBlockSparse
      -> LegalizeOps / FoldConstant / FuseOps / FuseTIR
      -> default schedules for the target (ours first, then dlight), tuning database if any
      -> tvm.compile -> CompiledModel
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._compat import quiet_vm_serialization
from .runtime import (
    META_SUFFIX,
    LoadedModel,
    ModelRunner,
    flatten_tensors,
    load,
    use_all_cores,
)
from .schedules.database import apply_tuning
from .schedules.pipeline import default_rules, lowering_pipeline, schedule_module
from .schedules.targets import resolve_target

__all__ = [
    "compile",
    "CompiledModel",
    "LoadedModel",
    "load",
    "lower_model",
    "plan_model",
    "graph_planner",
    "GraphPlanner",
    "LoweredModel",
    "lowering_pipeline",
    "default_rules",
    "resolve_target",
    "Report",
    "use_all_cores",
]

# ---------------------------------------------------------------------------------------------
# the report


@dataclass
class Report:
    """What the compiler did: one row per weight layer plus totals."""

    layers: list[dict[str, Any]] = field(default_factory=list)
    runtime_gathers: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    tuned_kernels: int = 0  # kernels whose schedule came from a tuning database
    # one row per channel stream shared by several layers: separate vs shared permutation
    streams: list[dict[str, Any]] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, Any]:
        weights = sum(r["weights"] for r in self.layers)
        kept = sum(r["weights_kept"] for r in self.layers)
        flops = sum(r["flops"] for r in self.layers)
        flops_kept = sum(r["flops"] * r["density"] for r in self.layers)
        return {
            "layers": len(self.layers),
            "weights": weights,
            "weights_kept": kept,
            "weights_kept_fraction": kept / weights if weights else 1.0,
            "flops": flops,
            "flops_kept_fraction": flops_kept / flops if flops else 1.0,
            "runtime_gathers": self.runtime_gathers,
            "tuned_kernels": self.tuned_kernels,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "totals": self.totals,
            "skipped": self.skipped,
            "streams": self.streams,
        }

    def format_table(self) -> str:
        head = (
            f"{'layer':<44} {'shape':<16} {'block':<7} {'kept':>9} {'ret.L1':>7} "
            f"{'kernel':<13} fused"
        )
        lines = [head, "-" * len(head)]
        for r in self.layers:
            lines.append(
                f"{r['name']:<44} {'x'.join(map(str, r['shape'])):<16} "
                f"{'x'.join(map(str, r['block'])):<7} "
                f"{str(r['kept_blocks']) + '/' + str(r['blocks']):>9} {r['retained_l1']:>7.3f} "
                f"{r['kernel']:<13} {r['fused']}"
            )
        for s in self.skipped:
            lines.append(f"{s['name']:<44} dense: {s['reason']}")
        for st in self.streams:
            shared = st["retained_l1_shared"]
            lines.append(
                f"stream of {st['channels']} channels, {len(st['layers'])} layers, "
                f"{st['joins']} joins: ret.L1 separate {st['retained_l1_separate']:.3f}, "
                f"shared {'-' if shared is None else format(shared, '.3f')}"
                f" ({st['runtime_gathers_shared']} gathers) -> {st['choice']}"
                + (f" ({st['reason']})" if st["reason"] else "")
            )
        t = self.totals
        lines.append(
            f"weights kept {t['weights_kept_fraction']:.3f}, FLOPs kept "
            f"{t['flops_kept_fraction']:.3f}, runtime gathers {t['runtime_gathers']}, "
            f"tuned kernels {t['tuned_kernels']}"
        )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the compiled model


class CompiledModel(ModelRunner):
    """A compiled model: call it like the torch module (torch tensors or numpy in, torch out)."""

    def __init__(
        self,
        executable: Any,
        target: Any,
        plan: Any,
        report: Report,
        meta: Mapping[str, Any],
        ir: Any = None,
    ) -> None:
        device = "cuda" if target.kind.name == "cuda" else "cpu"
        self.executable = executable
        self.target = target
        self.plan = plan
        self.report = report
        self.ir = ir
        self._device_name = device
        self._vm_ready = False
        self._meta = dict(meta)

    def _ensure_vm(self) -> None:
        if not self._vm_ready:
            ModelRunner.__init__(self, self.executable, self._device_name, self._meta)
            self._vm_ready = True

    def __call__(self, *inputs: Any) -> Any:
        import torch

        self._ensure_vm()
        tensors = flatten_tensors(self.run_tvm(*inputs))
        if self._device_name == "cpu":  # the VM's fresh outputs, shared, not copied
            outs = [torch.from_dlpack(t) for t in tensors]
        else:
            outs = [torch.from_numpy(t.numpy()) for t in tensors]
        return tuple(outs) if self.meta["output_is_tuple"] or len(outs) > 1 else outs[0]

    def run_tvm(self, *inputs: Any) -> Any:
        self._ensure_vm()
        return super().run_tvm(*inputs)

    def benchmark(self, *inputs: Any, number: int = 5, repeat: int = 5) -> float:
        self._ensure_vm()
        return super().benchmark(*inputs, number=number, repeat=repeat)

    def device_source(self) -> str:
        """Generated device code (CUDA C++ for a cuda target; empty for CPU builds)."""

        def walk(module: Any) -> str:
            kind = getattr(module, "kind", None) or getattr(module, "type_key", "")
            if kind == "cuda":
                return str(module.inspect_source())
            return "".join(walk(m) for m in module.imports)

        return walk(self.executable.mod)

    def meta_inputs(self) -> list[dict[str, Any]]:
        """Per input: name, shape (None: dynamic), dtype and batch bound."""
        return [dict(d) for d in self._meta.get("inputs", [])]

    def export_bundle(self, directory: str | os.PathLike[str], cross_compiler: str | None = None,
                      runtime_dir: str | os.PathLike[str] | None = None,
                      download: bool = True) -> Path:
        """A folder to copy to the device and run there without Python: the model, the TVM
        runtime for its architecture and a C++ runner (:func:`tetris_tvm.deploy.export_bundle`)."""
        from .deploy import export_bundle

        return export_bundle(self, directory, cross_compiler=cross_compiler,
                             runtime_dir=runtime_dir, download=download)

    def export(self, path: str | os.PathLike[str], cross_compiler: str | None = None) -> Path:
        """Write a deployable shared library (and a small ``.tetris.json`` beside it).

        ``cross_compiler`` (e.g. ``"aarch64-linux-gnu-gcc"``) links for another machine; the
        target given to :func:`compile` must describe that machine (e.g.
        ``{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "num-cores": 4}``).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with quiet_vm_serialization():
            if cross_compiler:
                from tvm.support import cc

                self.executable.export_library(str(path),
                                               fcompile=cc.cross_compiler(cross_compiler))
            else:
                self.executable.export_library(str(path))
        meta = {**self._meta, "target": str(self.target), "report": self.report.to_dict()}
        Path(str(path) + META_SUFFIX).write_text(json.dumps(meta, indent=1, default=str))
        return path


# ---------------------------------------------------------------------------------------------
# compile


def _eligible_names(model: Any) -> tuple[set[str] | None, list[dict[str, str]]]:
    """Weight names of Linear / Conv2d(groups=1) layers, and the other layers with a reason."""
    import torch

    if not isinstance(model, torch.nn.Module):
        return None, []
    from .plan import eligible_layer as _eligible

    names, skipped = set(), []
    for mod_name, module in model.named_modules():
        if not list(module.parameters(recurse=False)):
            continue
        ok, reason = _eligible(module)
        if ok:
            names.add(f"{mod_name}.weight" if mod_name else "weight")
        elif isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            skipped.append({"name": mod_name, "reason": reason})
    return names, skipped








@dataclass
class LoweredModel:
    """A model after pruning and lowering: unscheduled TensorIR kernels in a Relax module."""

    mod: Any
    target: Any
    plan: Any
    report: Report
    meta: dict[str, Any]


def lower_model(
    model: Any,
    example_inputs: Sequence[Any] | Any,
    target: Any = "llvm",
    sparsity: float = 0.75,
    block_size: int | tuple[int, int] = (32, 32),
    plan: Any = None,
    *,
    dynamic_batch: bool | int = False,
    allow_gathers: bool = False,
    streams: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    prune_options: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    calibration: Any = None,
    importance: str | None = None,
    reconstruct: bool = False,
    allocation: str = "uniform",
    progress: bool = True,
) -> LoweredModel:
    """Everything :func:`compile` does before scheduling (arguments as there).

    The result's ``mod`` holds one unscheduled PrimFunc per kernel: what the default schedule
    rules and :func:`tetris_tvm.tune` work on.
    """
    use_all_cores()
    import tvm
    from tvm import relax

    from .frontend import BindWeights, import_model, max_batch
    from .passes import (
        ClipGatherIndices,
        FastActivations,
        FoldBatchNorm,
        FoldPermutations,
        LowerBlockSparse,
    )
    from .passes.lower import lowered_layers
    from .reorder import check_sparsity

    sparsity = check_sparsity(sparsity, "compile")
    tgt = resolve_target(target)
    # checks dtype before the slow steps; CPU schedules run row chunks in parallel, and their
    # dense linears use 32-wide weight panels (docs/results.md, "CPU schedule choices")
    cpu = tgt.kind.name == "llvm"
    lower = LowerBlockSparse(dtype=dtype, row_chunks=cpu, dense_block_n=32 if cpu else 16)
    max_batch(dynamic_batch)  # checks an int bound
    eligible, skipped = _eligible_names(model)
    imported = import_model(model, example_inputs, dynamic_batch=dynamic_batch)
    plan, prune_pass, stream_report = _plan_imported(
        model, imported, plan, eligible, sparsity, block_size,
        allow_gathers=allow_gathers, overrides=overrides, prune_options=prune_options,
        streams=streams, calibration=calibration, importance=importance,
        reconstruct=reconstruct, allocation=allocation, progress=progress,
    )
    passes = tvm.transform.Sequential(
        [
            prune_pass,  # apply the plan (computed by plan_graph above, or given)
            BindWeights(imported.weights),
            FoldPermutations(),
            FoldBatchNorm(),  # eval batch norms scale the weights (after the permutations)
            relax.transform.DeadCodeElimination(),
            lower,
            FastActivations(),
            ClipGatherIndices(),
            lowering_pipeline(),
        ],
        name="tetris_lower",
    )
    with tgt:
        mod = passes(imported.mod)
    gathers = mod.attrs.get("tetris.runtime_gathers") if mod.attrs is not None else None
    report = _report(plan, lowered_layers(mod), int(gathers or 0), skipped)
    report.streams = list(stream_report)
    meta = {"input_names": imported.input_names, "output_is_tuple": imported.output_is_tuple,
            "inputs": imported.input_specs}
    return LoweredModel(mod, tgt, plan, report, meta)


def plan_model(
    model: Any,
    example_inputs: Sequence[Any] | Any,
    sparsity: float = 0.75,
    block_size: int | tuple[int, int] = (32, 32),
    *,
    allow_gathers: bool = False,
    streams: str = "auto",
    overrides: Mapping[str, Any] | None = None,
    prune_options: Mapping[str, Any] | None = None,
    calibration: Any = None,
    importance: str | None = None,
    reconstruct: bool = False,
    allocation: str = "uniform",
    progress: bool = True,
) -> Any:
    """The plan :func:`compile` would compute for ``model`` (same arguments), without
    building anything: its permutations fold away in the compiled graph, and with the
    recovery options it carries the refitted weights. ``compile(model, ..., plan=plan)``
    then builds exactly this model; ``plan.apply(copy)`` is its torch reference, e.g. to
    measure quality."""
    from .frontend import import_model
    from .reorder import check_sparsity

    sparsity = check_sparsity(sparsity, "plan_model")
    eligible, _ = _eligible_names(model)
    imported = import_model(model, example_inputs)
    plan, _, _ = _plan_imported(
        model, imported, None, eligible, sparsity, block_size,
        allow_gathers=allow_gathers, overrides=overrides, prune_options=prune_options,
        streams=streams, calibration=calibration, importance=importance,
        reconstruct=reconstruct, allocation=allocation, progress=progress,
    )
    return plan


class GraphPlanner:
    """Plans the way :func:`compile` does, for the model's CURRENT weights, many times.

    The model is exported once; each call reads the weights anew and runs
    :func:`~tetris_tvm.passes.plan_graph` (permutations that fold away in the compiled
    graph, coupled layers, shared streams). Made by :func:`graph_planner`;
    :func:`tetris_tvm.finetune` calls it at every pruning step as
    ``planner(model, sparsity, scores)``.
    """

    def __init__(self, model: Any, example_inputs: Sequence[Any] | Any, block_size: Any,
                 overrides: Mapping[str, Any] | None = None, streams: str = "auto") -> None:
        from .frontend import import_model

        self.block_size = block_size
        self.overrides = overrides
        self.streams = streams
        self.eligible, _ = _eligible_names(model)
        self.imported = import_model(copy.deepcopy(model).eval(), example_inputs)

    def __call__(self, model: Any, sparsity: float, scores: Mapping[str, np.ndarray] | None,
                 overrides: Mapping[str, Any] | None = None) -> Any:
        from .passes import plan_graph

        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        weights = dict(self.imported.weights)
        for relax_name, torch_name in self.imported.torch_names.items():
            if torch_name in state:
                weights[relax_name] = state[torch_name].astype(weights[relax_name].dtype)
        plan, _ = plan_graph(
            self.imported.mod, weights, self.imported.torch_names, eligible=self.eligible,
            sparsity=sparsity, block_size=self.block_size,
            overrides={**(self.overrides or {}), **(overrides or {})},
            streams=self.streams, scores=scores, progress=False,
        )
        return plan


def graph_planner(model: Any, example_inputs: Sequence[Any] | Any,
                  block_size: int | tuple[int, int] = (32, 32), *,
                  overrides: Mapping[str, Any] | None = None, streams: str = "auto"
                  ) -> GraphPlanner:
    """A planner for :func:`tetris_tvm.finetune` whose plans compile with no runtime gathers
    (``compile(model, example_inputs, plan=plan)``)."""
    return GraphPlanner(model, example_inputs, block_size, overrides, streams)


def _plan_imported(
    model: Any,
    imported: Any,
    plan: Any,
    eligible: set[str] | None,
    sparsity: float,
    block_size: int | tuple[int, int],
    *,
    allow_gathers: bool,
    overrides: Mapping[str, Any] | None,
    prune_options: Mapping[str, Any] | None,
    streams: str,
    calibration: Any,
    importance: str | None,
    reconstruct: bool,
    allocation: str,
    progress: bool,
) -> tuple[Any, Any, list[dict[str, Any]]]:
    """The plan for an imported model (computed by :func:`~tetris_tvm.passes.plan_graph`
    with the graph's folding constraints unless given), with quality recovery when
    calibration data is given, the TetrisPrune pass that applies it, and the planning's
    stream report (empty for a given or recovered plan). The imported weights are updated
    to the values the plan carries."""
    from .passes import TetrisPrune, plan_graph

    if plan is not None:
        missing = [n for n in plan if n not in imported.torch_names.values()]
        if missing:
            raise ValueError(f"plan has layers the model does not: {missing[:5]}")
        if calibration is not None or reconstruct or allocation != "uniform":
            raise ValueError("give either plan= or the recovery options (calibration, "
                             "reconstruct, allocation), not both: a given plan is used as it is")
    setup = None
    if plan is None and (calibration is not None or reconstruct or allocation != "uniform"
                         or importance not in (None, "magnitude")):
        import torch

        if not isinstance(model, torch.nn.Module):
            raise ValueError("calibration-aware pruning needs the torch.nn.Module, not an "
                             "ExportedProgram")
        from .oneshot import prepare_recovery

        method = "tetris"
        setup = prepare_recovery(
            model, sparsity, block_size, calibration=calibration, importance=importance,
            allocation=allocation, reconstruct=reconstruct, method=method,
            overrides=overrides, progress=progress,
        )
        overrides = setup.overrides(overrides)

    def compute_plan() -> tuple[Any, list[dict[str, Any]]]:
        return plan_graph(
            imported.mod,
            imported.weights,
            imported.torch_names,
            eligible=eligible,
            sparsity=sparsity,
            block_size=block_size,
            prune_options=prune_options,
            allow_gathers=allow_gathers,
            overrides=overrides,
            streams=streams,
            scores=None if setup is None else setup.scores,
            progress=progress,
        )

    stream_report: list[dict[str, Any]] = []
    if setup is not None:
        plan, _ = compute_plan()  # (its stream rows are not reported, as before)
        plan.settings.update(setup.settings(), reconstruct=bool(reconstruct))
        if reconstruct:
            from .reconstruct import reconstruct as reconstruct_plan

            plan, rows = reconstruct_plan(model, plan, setup.batches, progress=progress)
            plan.settings["reconstruction"] = rows
    elif plan is None:
        plan, stream_report = compute_plan()
    if plan.params:
        by_torch = {t: r for r, t in imported.torch_names.items()}
        unknown = [n for n in plan.params if n not in by_torch and n in plan]
        if unknown:
            raise ValueError(f"plan sets parameters the exported model does not have: "
                             f"{unknown[:5]}")
        for name, value in plan.params.items():
            if name not in by_torch:
                continue  # a parameter the exported graph does not use
            relax_name = by_torch[name]
            old = imported.weights[relax_name]
            if tuple(old.shape) != tuple(value.shape):
                raise ValueError(f"{name}: plan sets shape {tuple(value.shape)}, the model's "
                                 f"parameter is {tuple(old.shape)}")
            imported.weights[relax_name] = np.asarray(value, dtype=old.dtype)
    return plan, TetrisPrune(plan, imported.weights, imported.torch_names), stream_report


def compile(  # noqa: A001 - the public name of the API contract
    model: Any,
    example_inputs: Sequence[Any] | Any,
    target: Any = "llvm",
    sparsity: float = 0.75,
    block_size: int | tuple[int, int] = (32, 32),
    plan: Any = None,
    tuning: str | os.PathLike[str] | None = None,
    *,
    tuning_fallback: bool = False,
    **options: Any,
) -> CompiledModel:
    """Prune ``model`` with TETRIS and compile it with block-sparse kernels.

    The keyword arguments from ``dynamic_batch`` on go to :func:`lower_model` as they are.

    Args:
        model: a ``torch.nn.Module`` or ``torch.export.ExportedProgram``.
        example_inputs: the input tensors (shapes are compiled in, except a dynamic batch).
        target: ``"llvm"`` (this CPU), ``"cuda"``, a JSON target dict or a tvm Target.
        sparsity: fraction of blocks pruned per layer, in ``[0, 1)``; ``0`` compiles the dense
            model through the same path (the baseline for speedups).
        block_size: ``(out, in)`` channel block.
        plan: a :class:`~tetris_tvm.PruningPlan` to use instead of computing one (its
            permutations are honoured; gathers stay where they cannot be folded).
        tuning: a work directory written by :func:`tetris_tvm.tune`; its checked records for
            this target replace the default schedules of the kernels they cover.
        tuning_fallback: when ``tuning`` has nothing for this target or model, warn and use
            the default schedules instead of raising ``ValueError``.
        dynamic_batch: compile dimension 0 of every input as symbolic, so one build runs any
            batch size (block-sparse kernels pad their rows to a multiple of 24 internally;
            MiniLM ran 4% slower than a fixed-batch build at batch 8, 29% at batch 1).
            An int bounds the batch, which lets Relax plan all memory once. Half-precision
            kernels (``dtype``) need a fixed batch; dynamic builds keep those layers float32.
        allow_gathers: let computed plans permute every axis even where a runtime gather
            must stay (better retained L1, some gather cost).
        streams: channel streams shared by several layers (a residual stream): ``"auto"``
            gives each one permutation for all its layers when that retains more L1 and
            needs no runtime gather, ``"shared"`` also when it needs gathers (e.g. one at a
            model output), ``"separate"`` never. ``report.streams`` has the comparison.
        overrides: per-layer ``{pattern: {"sparsity", "block_size", "skip"}}``.
        prune_options: extra arguments for :func:`~tetris_tvm.prune_weight` (e.g. balanced).
        dtype: ``"float16"`` or ``"bfloat16"`` stores the block-sparse linear and conv
            layers' weights in that type and runs them with half operands and float32
            accumulation (tensor cores for linears on CUDA); inputs, outputs, layers kept
            dense and every other op stay float32.
        calibration, importance, reconstruct, allocation: quality recovery for a computed
            plan, as in :func:`tetris_tvm.prune` (calibration batches are run through the
            torch model; the plan still only permutes what the graph can fold away).
            ``cm.plan`` then carries the refitted weights, and the compiled model computes
            the model with ``cm.plan.params`` and the masks applied.
        progress: show progress bars for the recovery steps.
    """
    import tvm

    lowered = lower_model(model, example_inputs, target, sparsity, block_size, plan, **options)
    tgt, mod = lowered.target, lowered.mod
    if tuning is not None:
        mod, tuned = apply_tuning(mod, tgt, tuning, fallback=tuning_fallback)
        lowered.report.tuned_kernels = tuned
    mod = schedule_module(mod, tgt)  # the rest: default schedules; then build-time marks
    executable = tvm.compile(mod, target=tgt)
    return CompiledModel(executable, tgt, lowered.plan, lowered.report, lowered.meta, ir=mod)


def _report(plan: Any, lowered: Sequence[Any], gathers: int, skipped: list) -> Report:
    rows = []
    by_name = {layer.name: layer for layer in lowered}
    for name, lp in plan.items():
        low = by_name.get(name)
        weights = int(lp.mask.size)
        kept = int(lp.mask.sum())
        rows.append(
            {
                "name": name,
                "shape": list(lp.mask.shape),
                "block": list(lp.block_size[:2]),
                "kept_blocks": lp.kept_blocks,
                "blocks": lp.n_blocks,
                "retained_l1": float(lp.retained_l1),
                "density": kept / weights if weights else 1.0,
                "weights": weights,
                "weights_kept": kept,
                "flops": weights,  # per output position; relative figures only
                "kernel": low.kernel if low is not None else "dense (not lowered)",
                "fused": low.fused if low is not None else "",
                "perm_out": not bool(np.array_equal(lp.perms[0], np.arange(lp.perms[0].size))),
                "perm_in": not bool(np.array_equal(lp.perms[1], np.arange(lp.perms[1].size))),
            }
        )
    return Report(layers=rows, runtime_gathers=int(gathers), skipped=list(skipped))
