"""Layer-wise reconstruction: refit the kept weights of each pruned layer, masks fixed.

Pruning a block removes its contribution to the layer's output; the weights that stay can
make up for much of it. For a layer with dense weights ``W`` (bias as a last column), its
dense inputs ``X_d`` and the inputs ``X_p`` it gets inside the already-pruned model, every
output row ``r`` is refitted on its kept columns ``K_r``::

    min_w || X_p[:, K_r] w - X_d W_r ||^2 + lambda ||w||^2

so the pruned layer reproduces the DENSE layer's output on the calibration data, also making
up for the error the layers before it left (their outputs are its ``X_p``). The damping term
pulls ``w`` towards the dense layer's kept weights (``lambda ||w - W_r[K_r]||^2``) rather
than towards zero: with little or one-sided calibration data the refit stays near plain
pruning instead of shrinking. Rows with the same
kept columns (all the rows of one TETRIS block-row) share one solve. Layers are refitted in the
order the forward pass reaches them; layers reading the same input (q, k, v) form one stage,
refitted from one pass. A pruned element stays exactly zero.

A refit fitted and judged on the same rows flatters itself, more so the fewer rows there are
against the layer's input width. So the last quarter of every batch's rows is held back: each
layer's damping is chosen among a few values by the error on those rows, a row keeps its plain
masked weights when the refit does not lower its held-back error, and the chosen refit is then
solved on all rows. Layers that see fewer rows than :data:`MIN_ROWS_PER_INPUT` times their
input width are named in a warning.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .calibration import CalibrationBatch, as_batches, capture_inputs, layer_modules, layer_stages

if TYPE_CHECKING:
    from .plan import PruningPlan

__all__ = ["refit_rows", "refit_validated", "reconstruct", "RefitResult", "MIN_ROWS_PER_INPUT",
           "DAMPS"]

MIN_ROWS_PER_INPUT = 4
"""reconstruction warns when a layer sees fewer calibration rows than this many times its input
width (the refit then fits the calibration data more than the layer)."""

DAMPS = (0.01, 0.1, 1.0)
"""Relative dampings a layer's refit chooses from by its held-back error."""


class RefitResult:
    """A refitted layer: ``weight`` (rows, cols) incl. a bias column, and its calibration
    errors (sum of squares) before and after, with the dense output's energy."""

    def __init__(self, weight: np.ndarray, before: float, after: float, energy: float) -> None:
        self.weight = weight
        self.before = before
        self.after = after
        self.energy = energy

    @property
    def relative_before(self) -> float:
        return self.before / self.energy if self.energy > 0 else 0.0

    @property
    def relative_after(self) -> float:
        return self.after / self.energy if self.energy > 0 else 0.0


def _row_errors(w: np.ndarray, wd: np.ndarray, hpp: np.ndarray, c: np.ndarray,
                hdd: np.ndarray) -> np.ndarray:
    """Per row ``||X_p w_r - X_d wd_r||^2`` from the Gram matrices."""
    return (
        np.einsum("ij,ij->i", w @ hpp, w)
        - 2.0 * np.einsum("ij,ij->i", w @ c, wd)
        + np.einsum("ij,ij->i", wd @ hdd, wd)
    )


def refit_rows(
    dense: np.ndarray,
    keep: np.ndarray,
    hpp: np.ndarray,
    cross: np.ndarray | None = None,
    hdd: np.ndarray | None = None,
    damp: float = 0.01,
    prior: str = "zero",
) -> RefitResult:
    """Refit ``dense`` (rows, cols) on its kept entries ``keep`` (bool, same shape).

    ``hpp = X_p^T X_p``, ``cross = X_p^T X_d`` and ``hdd = X_d^T X_d`` (both default to
    ``hpp``: the layer's inputs are unchanged). The damping adds ``damp * mean(diag)`` to the
    diagonal of each solve and pulls the solution towards ``prior``: ``"zero"`` (ridge) or
    ``"dense"`` (the dense layer's kept weights, so a refit with little data stays close to
    plain pruning). Returns the new weights (zero wherever ``keep`` is False).
    """
    import scipy.linalg

    if prior not in ("zero", "dense"):
        raise ValueError(f"prior must be 'zero' or 'dense', got {prior!r}")
    wd = np.asarray(dense, dtype=np.float64)
    keep = np.asarray(keep, dtype=bool)
    cross = hpp if cross is None else cross
    hdd = hpp if hdd is None else hdd
    masked = wd * keep
    out = masked.copy()
    patterns, inverse = np.unique(np.packbits(keep, axis=1), axis=0, return_inverse=True)
    inverse = np.asarray(inverse).ravel()
    diag = np.diag(hpp)
    for g in range(len(patterns)):
        rows = np.flatnonzero(inverse == g)
        cols = np.flatnonzero(keep[rows[0]])
        if cols.size == 0:
            continue
        a = hpp[np.ix_(cols, cols)]
        lam = damp * float(diag[cols].mean()) if diag[cols].mean() > 0 else damp
        a = a + lam * np.eye(cols.size)
        b = cross[cols] @ wd[rows].T
        if prior == "dense":
            b = b + lam * wd[np.ix_(rows, cols)].T
        try:
            sol = scipy.linalg.solve(a, b, assume_a="pos", check_finite=False)
        except np.linalg.LinAlgError:
            sol = np.linalg.lstsq(a, b, rcond=None)[0]
        out[np.ix_(rows, cols)] = sol.T
    before = _row_errors(masked, wd, hpp, cross, hdd)
    after = _row_errors(out, wd, hpp, cross, hdd)
    worse = ~(after < before)
    out[worse] = masked[worse]
    after = np.where(worse, before, after)
    energy = float(np.einsum("ij,ij->", wd @ hdd, wd))
    return RefitResult(out, float(before.sum()), float(after.sum()), energy)


Grams = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(X_p^T X_p, X_p^T X_d, X_d^T X_d)`` of some calibration rows."""


def refit_validated(
    dense: np.ndarray, keep: np.ndarray, fit: Grams, held: Grams | None,
    damps: Sequence[float] = DAMPS, prior: str = "dense",
) -> tuple[RefitResult, dict[str, float]]:
    """Refit ``dense`` on ``keep`` with the damping (of ``damps``) whose refit on the ``fit``
    rows has the least error on the ``held`` rows; rows whose held-back error the refit does
    not lower keep their masked weights. The result is solved on all rows (fit + held).

    Returns the refit and ``{"damp", "held_error_masked", "held_error_refit"}`` (relative
    to the dense output's energy on the held-back rows). Without ``held`` rows this is
    :func:`refit_rows` with the first damping."""
    if held is None:
        return refit_rows(dense, keep, *fit, damp=damps[0], prior=prior), {"damp": damps[0]}
    wd = np.asarray(dense, dtype=np.float64)
    masked = wd * keep
    masked_err = _row_errors(masked, wd, *held)
    energy = max(float(np.einsum("ij,ij->", wd @ held[2], wd)), 1e-300)
    best: tuple[float, float, np.ndarray] | None = None
    for damp in damps:
        trial_err = _row_errors(refit_rows(wd, keep, *fit, damp=damp, prior=prior).weight,
                                wd, *held)
        err = np.minimum(trial_err, masked_err)
        if best is None or err.sum() < best[1]:
            best = (damp, float(err.sum()), trial_err < masked_err)
    assert best is not None
    damp, held_err, better = best
    full = tuple(f + h for f, h in zip(fit, held, strict=True))
    res = refit_rows(wd, keep, *full, damp=damp, prior=prior)
    res.weight[~better] = masked[~better]  # those rows' errors become their masked ones
    res.after = float(_row_errors(res.weight, wd, *full).sum())
    return res, {"damp": damp, "held_error_masked": float(masked_err.sum()) / energy,
                 "held_error_refit": held_err / energy}


def _flat(module: Any) -> np.ndarray:
    """The layer's weight as (O, cols) with the bias as a last column, float64."""
    w = module.weight.detach().double().cpu().numpy().reshape(module.weight.shape[0], -1)
    if module.bias is not None:
        w = np.concatenate([w, module.bias.detach().double().cpu().numpy()[:, None]], axis=1)
    return w


def _write(module: Any, flat: np.ndarray) -> None:
    import torch

    with torch.no_grad():
        cols = int(np.prod(module.weight.shape[1:]))
        w = torch.from_numpy(flat[:, :cols].reshape(module.weight.shape))
        module.weight.copy_(w.to(module.weight.dtype))
        if module.bias is not None:
            module.bias.copy_(torch.from_numpy(flat[:, cols]).to(module.bias.dtype))


def reconstruct(
    model: Any,
    plan: PruningPlan,
    calibration: Any,
    *,
    damp: float = 0.01,
    prior: str = "dense",
    progress: bool = False,
) -> tuple[PruningPlan, list[dict[str, Any]]]:
    """Refit the kept weights (and biases) of every planned layer, layer by layer.

    Args:
        model: the dense torch model the plan was made for (not changed).
        plan: its :class:`~tetris_tvm.PruningPlan` (masks fixed; params it already carries
            are the starting point).
        calibration: example inputs (see :func:`tetris_tvm.calibration.as_batches`).
        damp: the least relative damping of the least-squares solves; each layer chooses
            among it, 10x and 100x it by its held-back error.
        prior: what the damping pulls towards (see :func:`refit_rows`).
        progress: show a progress bar over the stages.

    Returns:
        ``(plan, report)``: a plan carrying the refitted weights and biases as params, and one
        row per layer with its calibration rows, its relative calibration error before and
        after the refit, the damping chosen and its held-back errors.
    """
    batches: Sequence[CalibrationBatch] = as_batches(calibration)
    names = list(plan)
    dense = copy.deepcopy(model).eval()
    work = plan.apply(copy.deepcopy(model).eval(), keep=False)
    dense_mods = layer_modules(dense, names)
    work_mods = layer_modules(work, names)
    stages = layer_stages(work, batches[0], work_mods)
    it: Any = stages
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(stages, desc="reconstruction", unit="stage")
    report = []
    scarce: list[str] = []
    damps = tuple(damp * s for s in (1.0, 10.0, 100.0))
    for stage in it:
        fit: dict[str, list[Any]] = {}
        held: dict[str, list[Any]] = {}
        count = dict.fromkeys(stage, 0)
        for i, batch in enumerate(batches):
            xd = capture_inputs(dense, batch, {n: dense_mods[n] for n in stage}, i)
            xp = capture_inputs(work, batch, {n: work_mods[n] for n in stage}, i)
            for n in stage:
                a, b = xp[n], xd[n]
                count[n] += a.shape[0]
                cut = a.shape[0] - a.shape[0] // 4 if a.shape[0] >= 8 else a.shape[0]
                for part, rows in ((fit, slice(0, cut)), (held, slice(cut, None))):
                    pa, pb = a[rows], b[rows]
                    if pa.shape[0] == 0:
                        continue
                    terms = [(pa.T @ pa).double(), (pa.T @ pb).double(), (pb.T @ pb).double()]
                    part[n] = terms if n not in part else [
                        g + t for g, t in zip(part[n], terms, strict=True)]
        for n in stage:
            f = tuple(g.numpy() for g in fit[n])
            h = tuple(g.numpy() for g in held[n]) if n in held else None
            dense_flat = _flat(dense_mods[n])
            keep = plan[n].mask.reshape(plan[n].mask.shape[0], -1)
            if work_mods[n].bias is not None:
                keep = np.concatenate([keep, np.ones((keep.shape[0], 1), dtype=bool)], axis=1)
            res, chosen = refit_validated(dense_flat, keep, f, h, damps, prior)
            _write(work_mods[n], res.weight)
            if count[n] < MIN_ROWS_PER_INPUT * keep.shape[1]:
                scarce.append(f"{n} ({count[n]} rows for {keep.shape[1]} inputs)")
            report.append({"name": n, "rows": count[n],
                           "relative_error_masked": res.relative_before,
                           "relative_error_refit": res.relative_after, **chosen})
    if scarce:
        import warnings

        warnings.warn(
            f"reconstruction: {len(scarce)} layer(s) saw fewer calibration rows (tokens, "
            f"pixels) than {MIN_ROWS_PER_INPUT}x their input width, e.g. "
            f"{', '.join(scarce[:3])}: their refit follows the calibration data more than the "
            "layer; give more calibration inputs", stacklevel=2)
    params: dict[str, np.ndarray] = {}
    state = dict(work.named_parameters())
    for n in names:
        params[n] = state[n].detach().cpu().numpy().copy()
        bias = n.rsplit(".", 1)[0] + ".bias" if "." in n else "bias"
        if bias in state:
            params[bias] = state[bias].detach().cpu().numpy().copy()
    return plan.with_params(params), report
