"""Per-layer sparsity allocation: meet a global target where pruning costs the least.

Layers differ a lot in what pruning them costs (in all-MiniLM-L6-v2, pruning the attention
q/k projections at 50% barely moves the embeddings, pruning the FFN up-projections at 50% moves
them most). ``allocation="sensitivity"`` measures, on calibration data, the cost of pruning
each layer ALONE at a few sparsities (its TETRIS plan on the importance scores, refitted by
least squares when reconstruction is on): the relative squared error of the model's output
against the dense output. Costs are taken as additive over layers, each layer's curve is
replaced by its lower convex hull, and the cheapest segments (cost per pruned weight) are taken
until the global target is met: a multiple-choice knapsack that this greedy solves exactly for
convex curves. The last segment is cut at a whole number of blocks, so the pruned weights meet
the target to one block (exactly, counted in blocks, when all blocks have the same size).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .calibration import CalibrationBatch, model_output, run_batch
from .reorder import count_pruned_blocks

__all__ = ["LayerCost", "ALLOCATIONS", "sparsity_grid", "measure_option_costs", "allocate",
           "output_error"]

ALLOCATIONS: tuple[str, ...] = ("uniform", "sensitivity", "latency")


@dataclass
class LayerCost:
    """A layer's measured cost curve: ``costs[i]`` at ``sparsities[i]`` (cost 0 at 0)."""

    name: str
    weights: int
    blocks: int
    sparsities: list[float]
    costs: list[float]


def sparsity_grid(target: float) -> tuple[float, ...]:
    """The sparsities measured for a global ``target``: half of it, it, and two steps above."""
    t = float(target)
    return tuple(sorted({round(t / 2, 4), round(t, 4), round((1 + t) / 2, 4),
                         round((3 + t) / 4, 4)} - {0.0}))


def output_error(
    model: Any, batches: Sequence[CalibrationBatch], dense_out: Sequence[Any]
) -> float:
    """Relative squared error of ``model``'s first output against ``dense_out`` (padding
    positions excluded when a batch has a token mask)."""
    err = ref = 0.0
    for i, (batch, d) in enumerate(zip(batches, dense_out, strict=True)):
        y = model_output(run_batch(model, batch, i)).float()
        diff = (y - d) ** 2
        base = d**2
        if batch.token_mask is not None and tuple(y.shape[:2]) == tuple(batch.token_mask.shape):
            diff, base = diff[batch.token_mask], base[batch.token_mask]
        err += float(diff.sum())
        ref += float(base.sum())
    return err / ref if ref > 0 else 0.0


def measure_option_costs(
    model: Any,
    names: Sequence[str],
    mask_for: Callable[[str, Any], tuple[np.ndarray, int]],
    batches: Sequence[CalibrationBatch],
    options: Callable[[str], Sequence[Any]] | Sequence[Any],
    *,
    refit: Callable[[str, np.ndarray], tuple[np.ndarray, np.ndarray | None]] | None = None,
    progress: bool = False,
) -> dict[str, dict[Any, tuple[float, int]]]:
    """Each layer's output error when it alone is pruned each way it may be:
    ``{name: {option: (error, blocks)}}``.

    ``options`` lists the ways (a sequence for every layer, or ``options(name)``);
    ``mask_for(name, option)`` returns the layer's mask and its number of blocks;
    ``refit(name, mask)`` (optional) returns the weight and bias (or None) to measure instead
    of the plain masked weight.
    """
    import torch

    work = copy.deepcopy(model).eval()
    params = dict(work.named_parameters())
    dense_out = [model_output(run_batch(work, b, i)).float() for i, b in enumerate(batches)]
    it: Any = names
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(names, desc="sensitivity", unit="layer", leave=False)
    out: dict[str, dict[Any, tuple[float, int]]] = {}
    for name in it:
        p = params[name]
        original = p.detach().clone()
        bias_name = name.rsplit(".", 1)[0] + ".bias"
        bias = params.get(bias_name)
        bias_orig = None if bias is None else bias.detach().clone()
        dense_w = original.cpu().numpy()
        row: dict[Any, tuple[float, int]] = {}
        for option in (options(name) if callable(options) else options):
            mask, n_blocks = mask_for(name, option)
            if refit is not None:
                new_w, new_b = refit(name, mask)
            else:
                new_w, new_b = dense_w * mask, None
            with torch.no_grad():
                p.copy_(torch.as_tensor(new_w, dtype=p.dtype))
                if bias is not None and new_b is not None:
                    bias.copy_(torch.as_tensor(new_b, dtype=bias.dtype))
            row[option] = (output_error(work, batches, dense_out), n_blocks)
            with torch.no_grad():
                p.copy_(original)
                if bias is not None:
                    bias.copy_(bias_orig)
        out[name] = row
    return out


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of (x, cost) points sorted by x (x = pruned blocks)."""
    hull: list[tuple[float, float]] = []
    for p in sorted(points):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def allocate(costs: Sequence[LayerCost], target: float) -> dict[str, float]:
    """Per-layer sparsities (``k / blocks`` for a whole number ``k`` of pruned blocks) whose
    pruned weights add up to ``target`` of all the layers' weights, at the least total cost."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target sparsity must be in [0, 1), got {target}")
    total = sum(c.weights for c in costs)
    budget = target * total
    segments = []
    for li, c in enumerate(costs):
        pts = [(0.0, 0.0)] + [
            (float(count_pruned_blocks(c.blocks, s)), max(cost, 0.0))
            for s, cost in zip(c.sparsities, c.costs, strict=True)
        ]
        hull = _hull(pts)
        per_block = c.weights / c.blocks
        for (x1, y1), (x2, y2) in zip(hull, hull[1:], strict=False):
            if x2 > x1:
                segments.append(((y2 - y1) / ((x2 - x1) * per_block), li, x1, x2))
    segments.sort(key=lambda t: (t[0], t[1], t[2]))
    pruned = [0.0] * len(costs)
    taken = 0.0
    for _, li, x1, x2 in segments:
        if taken >= budget - 1e-9:
            break
        per_block = costs[li].weights / costs[li].blocks
        if pruned[li] != x1:  # convex hulls take their segments in order
            continue
        room = (budget - taken) / per_block
        step = min(x2 - x1, room)
        if step < x2 - x1:
            step = float(np.floor(step + 0.5))
        pruned[li] = x1 + step
        taken += step * per_block
    return {c.name: pruned[i] / c.blocks for i, c in enumerate(costs)}
