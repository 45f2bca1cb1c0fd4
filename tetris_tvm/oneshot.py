"""One-shot pruning with quality recovery: ``tetris_tvm.prune``.

Plain TETRIS clusters and prunes by ``|W|``. With calibration data (a few hundred example
inputs, never the data quality is measured on) three steps make the pruned model compute much
closer to the dense one, each optional and each measured in ``docs/quality.md``:

1. importance from activations (:mod:`tetris_tvm.importance`): what TETRIS clusters;
2. per-layer sparsities (:mod:`tetris_tvm.allocation`): a global target met where pruning
   costs least;
3. layer-wise reconstruction (:mod:`tetris_tvm.reconstruct`): the kept weights refitted to
   reproduce the dense layers' outputs; the plan carries the refitted values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .allocation import ALLOCATIONS, LayerCost, allocate, measure_option_costs, sparsity_grid
from .calibration import CalibrationBatch, InputGram, as_batches, layer_modules, run_batch
from .importance import IMPORTANCE, layer_importance
from .latency import (
    DEFAULT_CANDIDATES,
    LATENCY_GRID,
    KernelTimer,
    Option,
    allocate_latency,
    budget_seconds,
    measure_latency,
)
from .plan import PruningPlan, clamp_block, plan_layers, select_layers
from .reconstruct import reconstruct as reconstruct_plan
from .reconstruct import refit_rows
from .reorder import prune_elementwise, prune_weight
from .spec import PruningSpec

__all__ = ["prune", "RecoverySetup", "prepare_recovery", "recovery_defaults"]


def recovery_defaults(
    calibration: Any, importance: str | None, reconstruct: bool | None, allocation: str | None,
    latency: Any = None,
) -> tuple[str, bool, str]:
    """``(importance, reconstruct, allocation)`` with the unset (``None``) ones chosen by
    whether calibration data is given (:meth:`tetris_tvm.PruningSpec.recovery`)."""
    spec = PruningSpec(importance=importance, reconstruct=reconstruct, allocation=allocation,
                       latency=latency)
    return spec.recovery(calibration is not None)


@dataclass
class RecoverySetup:
    """What calibration gives a planner: checked batches, importance scores and (with
    ``allocation="sensitivity"``) per-layer sparsities.

    Shared by :func:`prune` (free permutations) and :func:`tetris_tvm.compile` (permutations
    the graph can fold away), so both plan from the same measurements.
    """

    batches: list[CalibrationBatch] | None
    scores: dict[str, np.ndarray] | None
    sparsities: dict[str, float] | None
    importance: str
    allocation: str
    held: list[CalibrationBatch] = field(default_factory=list)
    """calibration inputs held back from every recovery step, to check it on."""
    blocks: dict[str, tuple[int, int]] | None = None
    """per-layer block shapes chosen by ``allocation="latency"``."""
    latency: dict[str, Any] | None = None
    """what latency allocation measured and predicted (budget, times, choices)."""

    def overrides(self, base: Mapping[str, Any] | None) -> dict[str, Any]:
        """``base`` overrides with the chosen block shapes added by exact layer name (they
        come last, so they win over a pattern's block size)."""
        import glob

        out = dict(base or {})
        for name, block in (self.blocks or {}).items():
            out[glob.escape(name)] = {"block_size": block}
        return out

    def keep_better(self, model: Any, recovered: PruningPlan,
                    plain: Callable[[], PruningPlan]) -> PruningPlan:
        """``recovered``, unless the ``plain()`` plan (magnitude TETRIS, no recovery) has a
        lower whole-model output error on the held-back inputs: then ``plain()`` with a
        warning. Both errors go into the plan's settings (``"holdout_check"``)."""
        if not self.held:
            return recovered
        from .holdout import output_errors

        alt = plain()
        ours, theirs = output_errors(model, [recovered, alt], self.held)
        check = {"recovered": ours, "plain": theirs, "held_batches": len(self.held)}
        if ours <= theirs:
            recovered.settings["holdout_check"] = check
            return recovered
        import warnings

        warnings.warn(
            f"one-shot recovery did worse than plain magnitude TETRIS on the calibration "
            f"inputs held back from it (relative output error {ours:.3g} vs {theirs:.3g}): "
            "the plain plan is used. Give more and more varied calibration inputs",
            stacklevel=3)
        alt.settings.update(importance="magnitude", allocation="uniform", reconstruct=False,
                            holdout_check={**check, "used": "plain"})
        return alt

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "calibration_batches": len(self.batches or []),
            "importance": self.importance,
            "allocation": self.allocation,
        }
        if self.latency is not None:
            out["latency"] = self.latency
        return out


def _refitter(
    weights: Mapping[str, np.ndarray],
    biases: Mapping[str, np.ndarray | None],
    grams: Mapping[str, InputGram],
    damp: float,
) -> Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """``refit(name, mask)``: least-squares refit of one layer on its dense inputs."""

    def refit(name: str, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        w = weights[name]
        flat = w.reshape(w.shape[0], -1).astype(np.float64)
        keep = mask.reshape(w.shape[0], -1)
        b = biases[name]
        if b is not None:
            flat = np.concatenate([flat, b[:, None].astype(np.float64)], axis=1)
            keep = np.concatenate([keep, np.ones((keep.shape[0], 1), dtype=bool)], axis=1)
        new = refit_rows(flat, keep, grams[name].gram, damp=damp, prior="dense").weight
        cols = int(np.prod(w.shape[1:]))
        return new[:, :cols].reshape(w.shape), (new[:, cols] if b is not None else None)

    return refit


def prepare_recovery(
    model: Any,
    sparsity: float,
    block_size: int | tuple[int, int],
    *,
    calibration: Any = None,
    importance: str | None = None,
    allocation: str | None = None,
    reconstruct: bool | None = None,
    method: str = "tetris",
    overrides: Mapping[str, Any] | None = None,
    damp: float = 0.01,
    sensitivity_batches: int = 2,
    latency: Any = None,
    candidates: Sequence[tuple[int, int]] = DEFAULT_CANDIDATES,
    timer: KernelTimer | None = None,
    progress: bool = False,
) -> RecoverySetup:
    """Check the recovery options (unset ones as :func:`recovery_defaults`) and measure what
    they need on the calibration data. ``allocation="latency"`` needs the ``latency``
    budget, the ``candidates`` block shapes and a ``timer`` for the target (made by the
    compiler: :func:`tetris_tvm.latency.compiled_timer`)."""
    importance, reconstruct, allocation = recovery_defaults(
        calibration, importance, reconstruct, allocation, latency)
    if importance not in IMPORTANCE:
        raise ValueError(f"importance must be one of {IMPORTANCE}, got {importance!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    needs = [n for n, on in (
        (f"importance={importance!r}", importance != "magnitude"),
        ("reconstruct=True", reconstruct),
        (f"allocation={allocation!r}", allocation != "uniform"),
    ) if on]
    if allocation == "latency" and (latency is None or timer is None):
        raise ValueError(
            "allocation='latency' needs a latency budget and times kernels on the compile "
            "target: use tetris_tvm.compile or tetris_tvm.plan_model with latency=...")
    if calibration is None:
        if needs:
            raise ValueError(f"{', '.join(needs)} needs calibration data: pass calibration=[...]"
                             " (example inputs the model accepts)")
        return RecoverySetup(None, None, None, importance, allocation)
    from .holdout import split_holdout

    batches = as_batches(calibration)
    if len(batches) < 4:  # split by samples below: a batch the model refuses is named whole
        for i, b in enumerate(batches):
            run_batch(model, b, i)
    batches, held = split_holdout(batches)
    todo, _ = select_layers(model, sparsity, block_size, overrides)
    names = [t[0] for t in todo]
    modules = layer_modules(model, names)
    grams, scores = layer_importance(model, batches, names, importance, damp, progress)
    weights = {n: w.detach().cpu().float().numpy() for n, w, _, _ in todo}
    sparsities = None
    probe = _CostProbe(model, names, modules, weights, grams, scores, batches, method=method,
                       reconstruct=bool(reconstruct), damp=damp,
                       sensitivity_batches=sensitivity_batches, progress=progress)
    if allocation == "sensitivity":
        grid = sparsity_grid(sparsity)
        blocks = {n: clamp_block(b, weights[n].shape) for n, _, _, b in todo}
        measured = probe.costs({n: [Option(blocks[n], s) for s in grid] for n in names})
        costs = [LayerCost(n, int(weights[n].size), measured[n][Option(blocks[n], grid[-1])][1],
                           list(grid), [measured[n][Option(blocks[n], s)][0] for s in grid])
                 for n in names]
        sparsities = allocate(costs, sparsity)
    setup = RecoverySetup(batches, scores, sparsities, importance, allocation, held)
    if allocation == "latency":
        assert timer is not None
        _allocate_latency(setup, probe, latency, candidates, timer)
    return setup


@dataclass
class _CostProbe:
    """Measures what pruning one layer alone costs: the whole model's output error on a
    spread of calibration batches, each layer pruned each way it is asked (an
    :class:`~tetris_tvm.latency.Option`), refitted when reconstruction is on."""

    model: Any
    names: list[str]
    modules: Mapping[str, Any]
    weights: Mapping[str, np.ndarray]
    grams: Mapping[str, InputGram]
    scores: Mapping[str, np.ndarray]
    batches: list[CalibrationBatch]
    method: str
    reconstruct: bool
    damp: float
    sensitivity_batches: int
    progress: bool

    def costs(self, options: Mapping[str, Sequence[Option]]
              ) -> dict[str, dict[Option, tuple[float, int]]]:
        """``{name: {option: (output error, blocks)}}`` for every layer's ``options``."""
        def mask_for(name: str, o: Option) -> tuple[np.ndarray, int]:
            if self.method == "element":
                lp = prune_elementwise(self.scores[name], o.sparsity, name=name)
            else:
                lp = prune_weight(self.scores[name], o.block, o.sparsity, name=name)
            return lp.mask, lp.n_blocks

        biases = {n: None if self.modules[n].bias is None
                  else self.modules[n].bias.detach().cpu().numpy() for n in self.names}
        refit = (_refitter(self.weights, biases, self.grams, self.damp) if self.reconstruct
                 else None)
        k = max(min(self.sensitivity_batches, len(self.batches)), 1)
        spread = [self.batches[i * len(self.batches) // k] for i in range(k)]  # short and long
        return measure_option_costs(self.model, self.names, mask_for, spread,
                                    lambda n: options[n], refit=refit, progress=self.progress)


def _allocate_latency(setup: RecoverySetup, probe: _CostProbe, latency: Any,
                      candidates: Sequence[tuple[int, int]], timer: KernelTimer) -> None:
    """Fill ``setup.sparsities`` / ``setup.blocks`` / ``setup.latency`` with the options
    :func:`tetris_tvm.latency.allocate_latency` picks from measured kernel times and
    calibration costs."""
    names, weights = probe.names, probe.weights
    missing = [n for n in names if n not in timer.input_shapes]
    if missing:
        raise ValueError(f"latency allocation: layers {missing[:3]} did not run on the "
                         "example inputs, so their kernels cannot be timed")
    options = {
        n: [Option(b, s) for b in sorted({clamp_block(c, weights[n].shape) for c in candidates})
            for s in LATENCY_GRID]
        for n in names
    }
    reference = {n: Option(clamp_block(candidates[0], weights[n].shape), 0.5) for n in names}
    table = measure_latency(names, probe.modules, timer.input_shapes, options,
                            timer.time_layer, timer.time_model, context=timer.context,
                            cache=timer.cache, reference=reference, progress=probe.progress)
    budget = budget_seconds(latency, table.dense_model)
    measured = probe.costs(options)
    costs = {n: {o: err for o, (err, _) in row.items()} for n, row in measured.items()}
    choice = allocate_latency(costs, table, budget)
    setup.sparsities = {n: 0.0 if o is None else o.sparsity for n, o in choice.items()}
    setup.blocks = {n: o.block for n, o in choice.items() if o is not None}
    setup.latency = {
        "budget": latency if isinstance(latency, str) else float(latency),
        "budget_ms": budget * 1e3,
        "predicted_ms": table.predict(choice) * 1e3,
        "candidates": [list(b) for b in candidates],
        "choices": {n: "dense" if o is None else o.label() for n, o in choice.items()},
        **table.to_dict(),
    }


def prune(
    model: Any,
    sparsity: float | None = None,
    block_size: int | tuple[int, int] | None = None,
    *,
    spec: PruningSpec | None = None,
    calibration: Any = None,
    permute: Mapping[str, tuple[bool, bool]] | None = None,
    damp: float = 0.01,
    progress: bool = False,
    **options: Any,
) -> PruningPlan:
    """Plan the pruning of every eligible layer of ``model`` (the model is not changed).

    What to prune is a :class:`~tetris_tvm.PruningSpec` (``spec=``); ``sparsity``,
    ``block_size`` and the spec fields given as keywords (``importance``, ``reconstruct``,
    ``allocation``, ``method``, ``overrides``, ``reorder``, ``solver``, ``balanced``)
    replace the spec's.

    Args:
        model: a torch module (Linear and Conv2d layers with groups=1 are pruned).
        sparsity: fraction of blocks pruned, in ``[0, 1)`` (default 0.75): per layer, or with
            ``allocation="sensitivity"`` the fraction of all pruned layers' weights.
        block_size: ``(out, in)`` channel block (an int for square; default ``(32, 32)``);
            ``0`` = whole axis.
        calibration: example inputs (an iterable of tensors, tuples of tensors or dicts such
            as a tokenizer's output with an ``attention_mask``); needed by the options below.
        importance: what TETRIS clusters and prunes: ``"magnitude"`` (``|W|``),
            ``"activation"`` (``|W| * ||x||``, the default with calibration) or ``"hessian"``
            (OBS saliency); see :mod:`tetris_tvm.importance`.
        reconstruct: refit the kept weights and biases layer by layer so each pruned layer
            reproduces the dense layer's output on the calibration data; the plan carries
            the refitted values (``plan.params``) and ``plan.apply`` sets them. Default:
            on when ``calibration`` is given.
        allocation: ``"uniform"`` (every layer at ``sparsity``) or ``"sensitivity"``
            (per-layer sparsities chosen on the calibration data to meet the global target
            at the least output error; the plan's table shows each layer's). Default:
            ``"sensitivity"`` when ``calibration`` is given, else ``"uniform"``.
        reorder, method, solver, balanced, overrides, permute: as
            :func:`tetris_tvm.plan.plan_layers` (``method="element"``: unstructured pruning,
            the accuracy anchor; it uses the importance scores too).
        damp: relative damping of the least-squares solves.
        progress: show progress bars.

    Returns:
        A :class:`~tetris_tvm.PruningPlan`; the masked reference is the model with
        ``plan.params`` and the masks applied (``plan.apply(model)``).
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"prune: model must be a torch.nn.Module, got {type(model).__name__}")
    if spec is not None and not isinstance(spec, PruningSpec):
        raise ValueError(f"prune: spec must be a tetris_tvm.PruningSpec, got "
                         f"{type(spec).__name__}")
    spec = (spec or PruningSpec()).with_options("prune", sparsity=sparsity,
                                                block_size=block_size, **options)
    extra = sorted(set(spec.prune_options) - {"reorder", "solver", "balanced"})
    if extra:
        raise ValueError(f"prune: prune options {extra} are used by compile's planner only")
    sparsity, block_size, method = spec.target_sparsity, spec.block, spec.method
    layer_options = {"reorder": True, "solver": "assign", "balanced": False,
                     **spec.prune_options}
    importance, reconstruct, allocation = spec.recovery(calibration is not None)
    setup = prepare_recovery(
        model, sparsity, block_size, calibration=calibration, importance=importance,
        allocation=allocation, reconstruct=reconstruct, method=method,
        overrides=spec.overrides, damp=damp, latency=spec.latency, progress=progress,
    )
    plan = plan_layers(
        model, sparsity, block_size, method=method, overrides=spec.overrides,
        sparsities=setup.sparsities, permute=permute, scores=setup.scores, progress=progress,
        **layer_options,
    )
    plan.settings.update(setup.settings(), reconstruct=bool(reconstruct))
    if reconstruct:
        assert setup.batches is not None
        plan, report = reconstruct_plan(model, plan, setup.batches, damp=damp, progress=progress)
        plan.settings["reconstruction"] = report
    if method == "tetris":
        plan = setup.keep_better(model, plan, lambda: plan_layers(
            model, sparsity, block_size, method=method, overrides=spec.overrides,
            permute=permute, **layer_options))
    return plan
