"""The TETRIS algorithm on numpy arrays: reorder the channel axes of a weight, prune whole blocks.

A weight ``w`` of shape ``(O, I, *window)`` (2-D for Linear, 4-D for Conv2d) is blocked over its
two channel axes; the window axes always lie whole inside a block. Each channel axis is split
into *block groups* of ``block_size`` consecutive slots (the last group is shorter when the
axis is not a multiple of the block: logical padding). A permutation of an axis is the same
thing as assigning every index to a group, so the algorithm works on group memberships:

- E-step: sum ``|w|`` over every block; prune the ``sparsity`` fraction of blocks with the
  smallest sums (``balanced=True``: the same number in every block-row).
- M-step: for one axis at a time, with the block mask fixed, move indices between groups to keep
  more magnitude. ``solver="assign"`` solves that exactly as a capacitated assignment on the
  ``n x G`` table of costs (:mod:`tetris_tvm.assignment`); ``solver="swap"`` is the paper's
  greedy pairwise swapping.
- Repeat until the kept magnitude stops growing. Every step keeps at least what it had, and the
  first E-step is plain block pruning, so the result is never worse than no reordering.

Nothing here imports torch or TVM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .assignment import AssignmentResult, assign_to_groups

__all__ = [
    "LayerPlan",
    "prune_weight",
    "prune_elementwise",
    "count_pruned_blocks",
    "prune_coupled",
    "prune_joint",
    "JointMember",
    "SOLVERS",
    "check_block_size",
    "check_sparsity",
    "retained_fraction",
]

Solver = Literal["assign", "swap"]
SOLVERS: tuple[str, ...] = ("assign", "swap")
# weights up to this many elements try several initial orders (see _default_inits)
_MULTI_START_MAX = 1 << 22
# temperatures of the soft E-steps that precede the hard ones (see _soft_keep)
DEFAULT_ANNEAL: tuple[float, ...] = (1.0, 0.35, 0.12, 0.04)

# ---------------------------------------------------------------------------------------------
# the result


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """How one weight is pruned.

    Attributes:
        mask: bool array of the weight's shape in ORIGINAL coordinates; True = kept.
        perms: one int array per axis (identity where not permuted);
            ``w[np.ix_(*perms)] * mask[np.ix_(*perms)]`` is block-structured.
        block_size: per-axis block size actually used (window axes: the whole window).
        retained_l1: ``sum(|w| * mask) / sum(|w|)``.
        sparsity: the requested fraction of pruned blocks.
        method: ``"tetris-assign"``, ``"tetris-swap"``, ``"block"`` or ``"element"``.
        balanced: every block-row keeps the same number of blocks.
        block_mask: kept blocks, ``(ceil(O/bo), ceil(I/bi))``, in PERMUTED order.
        history: pruned-magnitude fraction after each E-step (first entry: no reordering).
    """

    mask: np.ndarray
    perms: tuple[np.ndarray, ...]
    block_size: tuple[int, ...]
    retained_l1: float
    sparsity: float
    method: str
    balanced: bool = False
    block_mask: np.ndarray | None = None
    history: tuple[float, ...] = field(default=())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    @property
    def n_blocks(self) -> int:
        return int(self.block_mask.size) if self.block_mask is not None else int(self.mask.size)

    @property
    def kept_blocks(self) -> int:
        if self.block_mask is not None:
            return int(self.block_mask.sum())
        return int(self.mask.sum())

    @property
    def density(self) -> float:
        """Fraction of weight elements kept."""
        return float(self.mask.mean()) if self.mask.size else 1.0

    def permuted(self, array: np.ndarray) -> np.ndarray:
        """``array`` (weight-shaped) in the permuted storage order."""
        return np.asarray(array)[np.ix_(*self.perms)]

    def to_state(self) -> dict[str, Any]:
        """Plain arrays and scalars (what :meth:`PruningPlan.save` writes)."""
        state: dict[str, Any] = {
            "mask": np.packbits(self.mask.ravel()),
            "shape": np.asarray(self.mask.shape, dtype=np.int64),
            "block_size": np.asarray(self.block_size, dtype=np.int64),
            "retained_l1": np.float64(self.retained_l1),
            "sparsity": np.float64(self.sparsity),
            "method": np.str_(self.method),
            "balanced": np.bool_(self.balanced),
            "history": np.asarray(self.history, dtype=np.float64),
        }
        for axis, perm in enumerate(self.perms):
            state[f"perm{axis}"] = perm.astype(np.int64)
        if self.block_mask is not None:
            state["block_mask"] = self.block_mask
        return state

    def problem(self) -> str | None:
        """What makes this plan inconsistent (a damaged or hand-made plan), or None: the mask
        and permutations must fit the weight's shape, the permutations be permutations, the
        block sizes positive, and the permuted mask keep or drop whole blocks."""
        mask = self.mask
        if mask.dtype != bool or mask.ndim < 2:
            return f"mask must be a bool array of at least 2 axes, got {mask.dtype} {mask.shape}"
        if len(self.perms) != mask.ndim:
            return f"{len(self.perms)} permutations for a {mask.ndim}-axis weight"
        for axis, (perm, n) in enumerate(zip(self.perms, mask.shape, strict=True)):
            perm = np.asarray(perm)
            if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
                return (f"perm{axis} is not a permutation of the {n} indices of axis {axis} "
                        f"(length {perm.size}, values {perm.min() if perm.size else '-'}.."
                        f"{perm.max() if perm.size else '-'})")
        block = tuple(int(b) for b in self.block_size)
        if len(block) < 2 or any(b < 1 for b in block):
            return f"block_size {block} must hold a positive size per channel axis"
        # (retained_l1 may exceed 1 by float64 rounding in plans saved by older versions)
        retained_ok = 0.0 <= float(self.retained_l1) <= 1.0 + 1e-9
        if not 0.0 <= float(self.sparsity) < 1.0 or not retained_ok:
            return f"sparsity {self.sparsity} / retained_l1 {self.retained_l1} out of range"
        if self.method == "element" or mask.size == 0:
            return None
        bo, bi = block[0], block[1]
        pm = mask[np.ix_(*self.perms)].reshape(mask.shape[0], mask.shape[1], -1)
        rows, cols = np.arange(0, pm.shape[0], bo), np.arange(0, pm.shape[1], bi)
        kept = np.add.reduceat(np.add.reduceat(pm.sum(axis=2), rows, axis=0), cols, axis=1)
        sizes = np.outer(np.diff(np.append(rows, pm.shape[0])),
                         np.diff(np.append(cols, pm.shape[1]))) * pm.shape[2]
        if not np.all((kept == 0) | (kept == sizes)):
            bad = int(((kept != 0) & (kept != sizes)).sum())
            return f"the mask keeps part of {bad} block(s) of {bo}x{bi}: not block-structured"
        if self.block_mask is not None and (
            self.block_mask.shape != kept.shape or not np.array_equal(self.block_mask, kept > 0)
        ):
            return "block_mask does not match the mask"
        return None

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LayerPlan:
        """A plan from :meth:`to_state`'s arrays; ValueError when one is missing or does not
        fit (the caller names the file and the layer)."""
        try:
            shape = tuple(int(s) for s in np.asarray(state["shape"]).reshape(-1))
            size = int(np.prod(shape)) if shape else 1
            if any(d < 0 for d in shape):
                raise ValueError(f"negative shape {shape}")
            packed = np.asarray(state["mask"], dtype=np.uint8)
            if packed.size * 8 < size:
                raise ValueError(f"the mask holds {packed.size * 8} bits for {size} weights")
            mask = np.unpackbits(packed, count=size).astype(bool).reshape(shape)
            perms = tuple(np.asarray(state[f"perm{a}"], dtype=np.int64)
                          for a in range(len(shape)))
        except KeyError as e:
            raise ValueError(f"missing array {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ValueError(str(e)) from None
        return cls(
            mask=mask,
            perms=perms,
            block_size=tuple(int(b) for b in state["block_size"]),
            retained_l1=float(state["retained_l1"]),
            sparsity=float(state["sparsity"]),
            method=str(state["method"]),
            balanced=bool(state["balanced"]),
            block_mask=np.asarray(state["block_mask"], dtype=bool)
            if "block_mask" in state
            else None,
            history=tuple(float(h) for h in state.get("history", ())),
        )


# ---------------------------------------------------------------------------------------------
# input checks


def _as_weight(w: Any, name: str) -> np.ndarray:
    if hasattr(w, "detach"):  # a torch tensor, without importing torch
        w = w.detach().cpu().numpy()
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise ValueError(f"{name}: weight dtype {w.dtype} is not floating point")
    if w.ndim < 2:
        raise ValueError(f"{name}: weight must have at least 2 axes (out, in, ...), got {w.shape}")
    if not np.isfinite(w).all():
        bad = int((~np.isfinite(w)).sum())
        raise ValueError(f"{name}: weight has {bad} NaN/Inf values")
    return w


def check_sparsity(sparsity: float, name: str) -> float:
    """``sparsity`` as a float in [0, 1), or a ValueError naming ``name`` (the caller)."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= s < 1.0:
        raise ValueError(f"{name}: sparsity must be in [0, 1), got {sparsity!r}")
    return s


def check_block_size(block_size: Any, name: str) -> int | tuple[int, int]:
    """``block_size`` as given (an int, or an ``(out, in)`` pair of ints, each >= 0; 0 = the
    whole axis), or a ValueError naming ``name``: strings, fractions, booleans and other
    lengths are refused rather than guessed at."""
    def one(b: Any) -> int:
        if isinstance(b, (bool, np.bool_)) or not isinstance(b, (int, np.integer)):
            raise ValueError(f"{name}: block_size must be an int or an (out, in) pair of ints, "
                             f"got {block_size!r}")
        if b < 0:
            raise ValueError(f"{name}: block size {b} is negative (sizes are >= 0; 0 = the "
                             "whole axis)")
        return int(b)

    if isinstance(block_size, (list, tuple)):
        if len(block_size) != 2:
            raise ValueError(f"{name}: block_size must be an int or an (out, in) pair, got "
                             f"{block_size!r}")
        return one(block_size[0]), one(block_size[1])
    return one(block_size)


def resolve_block_size(
    block_size: int | Sequence[int], shape: Sequence[int], name: str = "weight"
) -> tuple[int, int]:
    """Block size over the two channel axes; ``0`` means the whole axis. Strict: no clamping."""
    checked = check_block_size(block_size, name)
    pair = checked if isinstance(checked, tuple) else (checked, checked)
    out: list[int] = []
    for axis, (b, n) in enumerate(zip(pair, shape[:2], strict=True)):
        if b < 0:
            raise ValueError(f"{name}: block size {b} on axis {axis} is negative")
        if b > n:
            raise ValueError(f"{name}: block size {b} on axis {axis} is larger than the axis ({n})")
        out.append(n if b == 0 else b)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# counting blocks


def count_pruned_blocks(n_blocks: int, sparsity: float) -> int:
    """Blocks pruned for a layer of ``n_blocks``: ``sparsity * n_blocks`` rounded half up,
    but always leaving at least one block (so ``sparsity < 1`` never prunes a whole layer)."""
    return min(int(math.floor(sparsity * n_blocks + 0.5)), max(n_blocks - 1, 0))


def _kept_per_row(n_cols: int, sparsity: float) -> int:
    """Balanced plans: blocks kept in every block-row (at least one)."""
    return max(1, n_cols - int(math.floor(sparsity * n_cols + 0.5)))


# ---------------------------------------------------------------------------------------------
# group bookkeeping


def _capacities(n: int, b: int) -> np.ndarray:
    groups = -(-n // b)
    cap = np.full(groups, b, dtype=np.int64)
    cap[-1] = n - (groups - 1) * b
    return cap


def _perm_from_groups(groups: np.ndarray) -> np.ndarray:
    """Slot order: group by group, members in ascending original index."""
    return np.argsort(groups, kind="stable").astype(np.int64)


def _second_singular_vectors(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left/right singular vectors of the 2nd singular value: the spectral (Fiedler-like)
    ordering that places rows and columns with similar magnitude profiles next to each other."""
    if min(a.shape) <= 2:
        return np.arange(a.shape[0], dtype=float), np.arange(a.shape[1], dtype=float)
    if min(a.shape) < 64:
        u, _, vt = np.linalg.svd(a.astype(np.float64), full_matrices=False)
        return u[:, 1], vt[1]
    from scipy.sparse.linalg import svds

    u, sv, vt = svds(a.astype(np.float64), k=2, random_state=0)
    i = int(np.argsort(sv)[0])  # svds returns ascending; the smaller of the top two
    return u[:, i], vt[i]


class _Blocked:
    """``|w|`` folded to a 2-D ``(O, I)`` energy map plus the current group of every index."""

    def __init__(
        self,
        energy: np.ndarray,
        block: tuple[int, int],
        init: str = "identity",
        permute: tuple[bool, bool] = (True, True),
    ) -> None:
        self.energy = energy
        self.energy_t = np.ascontiguousarray(energy.T)  # row gathers beat column gathers
        self.block = block
        self.caps = (_capacities(energy.shape[0], block[0]), _capacities(energy.shape[1], block[1]))
        self.groups = [
            np.arange(energy.shape[0]) // block[0],
            np.arange(energy.shape[1]) // block[1],
        ]
        if init not in ("identity", "norm", "spectral") and not init.startswith("random"):
            raise ValueError(f"unknown init {init!r}: identity, norm, spectral or random<seed>")
        if init == "norm":
            for axis in (0, 1):
                if not permute[axis]:
                    continue
                order = np.argsort(-energy.sum(axis=1 - axis), kind="stable")
                g = np.empty_like(self.groups[axis])
                g[order] = np.arange(order.size) // block[axis]
                self.groups[axis] = g
        elif init.startswith("random"):
            rng = np.random.default_rng(int(init[6:] or 0))
            for axis in (0, 1):
                if permute[axis]:
                    self.groups[axis] = rng.permutation(self.groups[axis])
        elif init == "spectral":
            u, vt = _second_singular_vectors(energy)
            for axis, vec in ((0, u), (1, vt)):
                if not permute[axis]:
                    continue
                order = np.argsort(vec, kind="stable")
                g = np.empty_like(self.groups[axis])
                g[order] = np.arange(order.size) // block[axis]
                self.groups[axis] = g

    @property
    def n_groups(self) -> tuple[int, int]:
        return self.caps[0].size, self.caps[1].size

    def _starts(self, axis: int) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.caps[axis])[:-1]])

    def col_group_sums(self) -> np.ndarray:
        """``A[r, gi]``: energy of row ``r`` inside column group ``gi``  (O x G1)."""
        perm = _perm_from_groups(self.groups[1])
        return np.add.reduceat(self.energy_t[perm], self._starts(1), axis=0).T

    def row_group_sums(self) -> np.ndarray:
        """``B[c, go]``: energy of column ``c`` inside row group ``go``  (I x G0)."""
        perm = _perm_from_groups(self.groups[0])
        return np.add.reduceat(self.energy[perm, :], self._starts(0), axis=0).T

    def block_sums(self, col_sums: np.ndarray | None = None) -> np.ndarray:
        a = self.col_group_sums() if col_sums is None else col_sums
        perm = _perm_from_groups(self.groups[0])
        return np.add.reduceat(a[perm], self._starts(0), axis=0)


def _e_step(block_sums: np.ndarray, sparsity: float, balanced: bool) -> np.ndarray:
    """Kept-block mask: drop the smallest block sums (stable, so ties break deterministically)."""
    g0, g1 = block_sums.shape
    keep = np.ones((g0, g1), dtype=bool)
    if balanced:
        n_keep = _kept_per_row(g1, sparsity)
        order = np.argsort(block_sums, axis=1, kind="stable")
        keep[np.arange(g0)[:, None], order[:, : g1 - n_keep]] = False
    else:
        n_prune = count_pruned_blocks(g0 * g1, sparsity)
        order = np.argsort(block_sums.ravel(), kind="stable")
        keep.ravel()[order[:n_prune]] = False
    return keep


def _soft_keep(block_sums: np.ndarray, hard: np.ndarray, temperature: float) -> np.ndarray:
    """Annealed E-step: how much each block counts as kept, a sigmoid around the pruning
    threshold. ``temperature`` is relative to the spread of the block sums; 0 is the hard mask.
    Early soft rounds let the M-step see which blocks are *nearly* kept, which keeps the
    alternation out of the poor local optimum that the first (arbitrary) hard mask sets."""
    if temperature <= 0.0 or hard.all():
        return hard.astype(np.float64)
    pruned_max = float(block_sums[~hard].max())
    kept_min = float(block_sums[hard].min())
    threshold = 0.5 * (pruned_max + kept_min)
    scale = temperature * float(block_sums.std()) + 1e-30
    z = np.clip((block_sums - threshold) / scale, -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-z))


# ---------------------------------------------------------------------------------------------
# M-step solvers


def _m_step_assign(
    gain: np.ndarray,
    groups: np.ndarray,
    cap: np.ndarray,
    warm: AssignmentResult | None,
) -> tuple[np.ndarray, AssignmentResult]:
    """Exact: assign indices to groups maximising the kept magnitude ``gain[r, g]``."""
    result = assign_to_groups(gain, cap, warm_start=warm)
    current = float(gain[np.arange(groups.size), groups].sum())
    if result.value < current:  # already optimal up to the auction's tolerance: keep it
        return groups, result
    return result.groups.astype(np.int64), result


def _swap_candidates(gain: np.ndarray, groups: np.ndarray, limit: int) -> np.ndarray:
    """Pairs ``(r, s)``, ``r < s``, whose swap increases the kept magnitude, best first."""
    n = groups.size
    current = gain[np.arange(n), groups]
    rows_per_chunk = max(1, (1 << 22) // max(n, 1))
    found: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        r = np.arange(start, stop)
        # kept after swapping r and s, minus kept before
        delta = (
            gain[r][:, groups]
            + gain[:, groups[r]].T
            - current[r][:, None]
            - current[None, :]
        )
        delta[np.arange(stop - start)[:, None] >= (np.arange(n)[None, :] - start)] = 0.0
        ii, jj = np.nonzero(delta > 1e-12 * max(1.0, float(current.max())))
        if ii.size:
            found.append(np.stack([ii + start, jj], axis=1))
            values.append(delta[ii, jj])
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    vals = np.concatenate(values)
    if vals.size > limit:
        top = np.argpartition(-vals, limit)[:limit]
        pairs, vals = pairs[top], vals[top]
    return pairs[np.argsort(-vals, kind="stable")]


def _m_step_swap(
    gain: np.ndarray, groups: np.ndarray, max_rounds: int = 50
) -> np.ndarray:
    """The paper's greedy: apply the best disjoint positive-gain swaps, recompute, repeat."""
    groups = groups.copy()
    n = groups.size
    for _ in range(max_rounds):
        pairs = _swap_candidates(gain, groups, limit=8 * n)
        if pairs.size == 0:
            break
        used = np.zeros(n, dtype=bool)
        swapped = 0
        for r, s in pairs:
            if used[r] or used[s] or groups[r] == groups[s]:
                continue
            used[r] = used[s] = True
            groups[r], groups[s] = groups[s], groups[r]
            swapped += 1
        if swapped == 0:
            break
    return groups


# ---------------------------------------------------------------------------------------------
# the public entry points


def _energy(w: np.ndarray) -> np.ndarray:
    """``|w|`` summed over the window axes, float32 for big weights (memory, bandwidth)."""
    dtype = np.float64 if w.size <= (1 << 22) else np.float32
    a = np.abs(w.astype(dtype, copy=False))
    return a.reshape(w.shape[0], w.shape[1], -1).sum(axis=2) if w.ndim > 2 else a


def _full_perms(blocked: _Blocked, ndim: int, shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    perms = [_perm_from_groups(blocked.groups[0]), _perm_from_groups(blocked.groups[1])]
    perms += [np.arange(n, dtype=np.int64) for n in shape[2:]]
    return tuple(perms[:ndim])


def _default_inits(size: int) -> tuple[str, ...]:
    """Initial orders tried (best kept): three for small weights, one past ~4M elements."""
    return ("identity", "norm", "spectral") if size <= _MULTI_START_MAX else ("identity",)


def _alternate(
    blocked: _Blocked,
    s: float,
    balanced: bool,
    solver: str,
    permute: tuple[bool, bool],
    anneal: Sequence[float],
    max_iters: int,
    tol: float,
    total: float,
) -> tuple[list[np.ndarray], np.ndarray, float, list[float]]:
    """E/M alternation from ``blocked``'s groups; returns the best (groups, keep, kept, hist)."""
    col_sums = blocked.col_group_sums()
    block_sums = blocked.block_sums(col_sums)
    keep = _e_step(block_sums, s, balanced)
    kept = float(block_sums[keep].sum())
    history = [1.0 - kept / total]
    best = ([g.copy() for g in blocked.groups], keep, kept)
    warm: list[AssignmentResult | None] = [None, None]
    schedule = list(anneal) + [0.0] * max_iters
    for step, temperature in enumerate(schedule):
        before = best[2]
        for axis in (0, 1):
            if not permute[axis] or blocked.n_groups[axis] == 1:
                continue
            weight = _soft_keep(block_sums, keep, temperature)
            if axis == 0:
                gain = col_sums @ weight.T
            else:
                gain = blocked.row_group_sums() @ weight
            if solver == "assign":
                new_groups, warm[axis] = _m_step_assign(
                    gain, blocked.groups[axis], blocked.caps[axis], warm[axis]
                )
            else:
                new_groups = _m_step_swap(gain, blocked.groups[axis])
            blocked.groups[axis] = new_groups
            col_sums = blocked.col_group_sums()
            block_sums = blocked.block_sums(col_sums)
            keep = _e_step(block_sums, s, balanced)
            kept = float(block_sums[keep].sum())
            history.append(1.0 - kept / total)
            if kept > best[2]:
                best = ([g.copy() for g in blocked.groups], keep, kept)
        if step >= len(anneal) and best[2] - before <= tol * total:
            break
    return best[0], best[1], best[2], history


def prune_weight(
    w: Any,
    block_size: int | Sequence[int] = (32, 32),
    sparsity: float = 0.75,
    reorder: bool = True,
    *,
    solver: Solver = "assign",
    balanced: bool = False,
    permute: tuple[bool, bool] = (True, True),
    max_iters: int = 20,
    tol: float = 1e-4,
    anneal: Sequence[float] = DEFAULT_ANNEAL,
    inits: Sequence[str] | None = None,
    name: str = "weight",
) -> LayerPlan:
    """Reorder and block-prune one weight (the TETRIS algorithm).

    Args:
        w: float array (numpy or torch), ``(out, in)`` or ``(out, in, kh, kw)``.
        block_size: block over the two channel axes, an int for square blocks; ``0`` means the
            whole axis. The window axes of a conv weight always lie whole inside a block. Axes
            that are not a multiple of the block end in a shorter block (logical padding).
        sparsity: fraction of blocks pruned, in ``[0, 1)``; the count is rounded half up and at
            least one block is always kept (:func:`count_pruned_blocks`).
        reorder: permute the channel axes (TETRIS); ``False`` is plain block pruning.
        solver: M-step solver: ``"assign"`` (exact per-axis assignment, default) or ``"swap"``
            (the paper's greedy pairwise swaps).
        balanced: every block-row keeps the same number of blocks (static trip counts).
        permute: which of the (out, in) axes may be permuted.
        max_iters: at most this many E/M rounds (each M-steps both axes).
        tol: stop when a round gains less than this fraction of the total magnitude.
        anneal: temperatures of the soft E-steps run before the hard ones (see ``_soft_keep``).
        inits: initial orders to start the alternation from, the best result is kept:
            ``"identity"``, ``"norm"`` (sorted by magnitude), ``"spectral"`` (2nd singular
            vectors), ``"random<seed>"``. Default: all three deterministic ones for weights up to
            4M elements, ``identity`` alone above (cost control).
        name: used in error messages (e.g. the layer's parameter name).

    Returns:
        A :class:`LayerPlan`; the computation is deterministic.
    """
    w = _as_weight(w, name)
    s = check_sparsity(sparsity, name)
    if solver not in SOLVERS:
        raise ValueError(f"{name}: solver must be one of {SOLVERS}, got {solver!r}")
    for flag, value in (("reorder", reorder), ("balanced", balanced)):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name}: {flag} must be True or False, got {value!r}")
    block = resolve_block_size(block_size, w.shape, name)
    full_block = block + tuple(w.shape[2:])

    energy = _energy(w)
    blocked = _Blocked(energy, block)
    total = float(energy.sum())
    block_sums = blocked.block_sums()
    keep = _e_step(block_sums, s, balanced)
    kept = float(block_sums[keep].sum())
    history = [1.0 - kept / total if total > 0 else 0.0]

    if reorder and s > 0.0 and total > 0.0 and keep.size > 1 and any(permute):
        best = (blocked.groups, keep, kept, history)
        starts = _default_inits(w.size) if inits is None else tuple(inits)
        for init in starts:
            start = _Blocked(energy, block, init, permute)
            run = _alternate(start, s, balanced, solver, permute, anneal, max_iters, tol, total)
            if run[2] > best[2]:
                best = (run[0], run[1], run[2], history + run[3])
        blocked.groups, keep, kept, history = best[0], best[1], best[2], best[3]

    method = f"tetris-{solver}" if reorder else "block"
    return _layer_plan(w, blocked, keep, full_block, s, method, balanced, history)


def _layer_plan(
    w: np.ndarray,
    blocked: _Blocked,
    keep: np.ndarray,
    full_block: tuple[int, ...],
    sparsity: float,
    method: str,
    balanced: bool,
    history: Sequence[float],
) -> LayerPlan:
    """The LayerPlan of ``w`` for the groups in ``blocked`` and the kept blocks ``keep``."""
    mask2d = keep[blocked.groups[0][:, None], blocked.groups[1][None, :]]
    mask = np.broadcast_to(mask2d.reshape(mask2d.shape + (1,) * (w.ndim - 2)), w.shape).copy()
    return LayerPlan(
        mask=mask,
        perms=_full_perms(blocked, w.ndim, w.shape),
        block_size=full_block,
        retained_l1=retained_fraction(w, mask),
        sparsity=sparsity,
        method=method,
        balanced=balanced,
        block_mask=keep,
        history=tuple(history),
    )


@dataclass(frozen=True, eq=False)
class JointMember:
    """One weight in a joint TETRIS problem (:func:`prune_joint`).

    ``axes`` names the *axis variable* of the weight's output and input channel axes: weights
    that name the same variable store that axis in one common order (they are joined in the
    network, e.g. a residual stream that several layers read and write). ``None`` keeps the
    axis in its original order. A variable used by one weight alone is a free axis.
    """

    name: str
    weight: Any
    block_size: tuple[int, int]
    sparsity: float
    axes: tuple[str | None, str | None]


class _Joined:
    """A JointMember's blocked energy and its running E-step."""

    def __init__(self, member: JointMember, balanced: bool) -> None:
        self.member = member
        self.w = _as_weight(member.weight, member.name)
        self.s = check_sparsity(member.sparsity, member.name)
        self.block = resolve_block_size(member.block_size, self.w.shape, member.name)
        self.blocked = _Blocked(_energy(self.w), self.block)
        self.total = max(float(self.blocked.energy.sum()), 1e-30)
        self.balanced = balanced
        self.refresh()

    def refresh(self) -> None:
        self.sums = self.blocked.block_sums()
        self.keep = _e_step(self.sums, self.s, self.balanced)
        self.kept = float(self.sums[self.keep].sum()) / self.total

    def gain(self, axis: int, temperature: float) -> np.ndarray:
        """Kept fraction of every index of ``axis`` in every group of that axis."""
        soft = _soft_keep(self.sums, self.keep, temperature)
        if axis == 0:
            return self.blocked.col_group_sums() @ soft.T / self.total
        return self.blocked.row_group_sums() @ soft / self.total


def groups_from_perm(perm: np.ndarray, block: int) -> np.ndarray:
    """The group of every index when ``perm`` (slot -> index) is cut into blocks of ``block``."""
    groups = np.empty(perm.size, dtype=np.int64)
    groups[np.asarray(perm)] = np.arange(perm.size) // block
    return groups


def prune_joint(
    members: Sequence[JointMember],
    *,
    balanced: bool = False,
    max_iters: int = 20,
    tol: float = 1e-4,
    anneal: Sequence[float] = DEFAULT_ANNEAL,
    init: dict[str, np.ndarray] | None = None,
) -> dict[str, LayerPlan]:
    """TETRIS for a group of weights whose channel axes are tied together.

    Every axis variable (see :class:`JointMember`) gets one order for all the weights that
    name it. The M-step for a variable adds the costs of all its weights (each weight's kept
    fraction counts alike), which is still one exact assignment; the E-step prunes every
    weight on its own. ``init`` gives a starting order (a permutation, slot -> index) for
    some variables, e.g. the orders of a separate plan: the result then keeps at least what
    that start keeps. Returns a LayerPlan per member name.
    """
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ValueError(f"prune_joint: member names must be unique, got {names}")
    joined = [_Joined(m, balanced) for m in members]
    uses: dict[str, list[tuple[_Joined, int]]] = {}
    for j in joined:
        for axis, var in enumerate(j.member.axes):
            if var is not None:
                uses.setdefault(var, []).append((j, axis))
    for var, where in uses.items():
        sizes = {(j.w.shape[axis], j.block[axis]) for j, axis in where}
        if len(sizes) != 1:
            detail = ", ".join(f"{j.member.name}[{axis}]" for j, axis in where)
            raise ValueError(
                f"axis {var!r} is shared by {detail} but their (size, block) differ: {sizes}"
            )
        if init and var in init:
            j0, a0 = where[0]
            start = groups_from_perm(np.asarray(init[var]), j0.block[a0])
            for j, axis in where:
                j.blocked.groups[axis] = start.copy()
            for j, _ in where:
                j.refresh()

    def objective() -> float:
        return float(sum(j.kept for j in joined))

    def snapshot() -> list[list[np.ndarray]]:
        return [[g.copy() for g in j.blocked.groups] for j in joined]

    kept = objective()
    history = [kept / max(len(joined), 1)]
    best = (snapshot(), kept)
    warm: dict[str, AssignmentResult | None] = dict.fromkeys(uses)
    if any(j.s > 0 for j in joined):
        for step, temperature in enumerate(list(anneal) + [0.0] * max_iters):
            before = best[1]
            for var, where in uses.items():
                j0, a0 = where[0]
                if j0.blocked.n_groups[a0] == 1:
                    continue
                gain = sum(j.gain(axis, temperature) for j, axis in where)
                new, warm[var] = _m_step_assign(
                    gain, j0.blocked.groups[a0], j0.blocked.caps[a0], warm[var]
                )
                for j, axis in where:
                    j.blocked.groups[axis] = new.copy()
                for j in {id(j): j for j, _ in where}.values():
                    j.refresh()
                kept = objective()
                history.append(kept / len(joined))
                if kept > best[1]:
                    best = (snapshot(), kept)
            if step >= len(anneal) and best[1] - before <= tol:
                break
    plans = {}
    for j, groups in zip(joined, best[0], strict=True):
        j.blocked.groups = groups
        j.refresh()
        full = j.block + tuple(j.w.shape[2:])
        plans[j.member.name] = _layer_plan(
            j.w, j.blocked, j.keep, full, j.s, "tetris-joint", balanced, history
        )
    return plans


def prune_coupled(
    w_a: Any,
    w_b: Any,
    block_a: tuple[int, int],
    block_b: tuple[int, int],
    sparsity_a: float,
    sparsity_b: float,
    *,
    permute_a_in: bool = False,
    permute_b_out: bool = False,
    balanced: bool = False,
    max_iters: int = 20,
    tol: float = 1e-4,
    anneal: Sequence[float] = DEFAULT_ANNEAL,
    names: tuple[str, str] = ("a", "b"),
) -> tuple[LayerPlan, LayerPlan]:
    """TETRIS for two layers that share an axis: the output axis of ``w_a`` feeds the input
    axis of ``w_b`` (``b(act(a(x)))``), so both must store it in ONE order for no gather to be
    needed between them. The shared axis is permuted to maximise the magnitude both layers
    keep; ``w_a``'s input and ``w_b``'s output axes are permuted only if allowed.
    A two-member :func:`prune_joint`.

    Requires ``block_a[0] == block_b[1]`` (the shared axis is blocked alike in both layers).
    Returns the two LayerPlans; ``plan_b.perms[1]`` equals ``plan_a.perms[0]``.
    """
    wa, wb = _as_weight(w_a, names[0]), _as_weight(w_b, names[1])
    if wa.shape[0] != wb.shape[1]:
        raise ValueError(f"{names}: shared axis sizes differ ({wa.shape[0]} vs {wb.shape[1]})")
    ba = resolve_block_size(block_a, wa.shape, names[0])
    bb = resolve_block_size(block_b, wb.shape, names[1])
    if ba[0] != bb[1]:
        raise ValueError(f"{names}: the shared axis needs one block size ({ba[0]} vs {bb[1]})")
    members = [
        JointMember(names[0], wa, ba, sparsity_a, ("shared", "a_in" if permute_a_in else None)),
        JointMember(names[1], wb, bb, sparsity_b, ("b_out" if permute_b_out else None, "shared")),
    ]
    plans = prune_joint(members, balanced=balanced, max_iters=max_iters, tol=tol, anneal=anneal)
    return plans[names[0]], plans[names[1]]


def retained_fraction(w: np.ndarray, mask: np.ndarray) -> float:
    """``sum(|w| * mask) / sum(|w|)`` in float64, at most 1 (a weight whose pruned entries
    are already zero, as after fine-tuning, keeps everything: the two sums differ only by
    rounding), and 1 for an all-zero weight."""
    mag = np.abs(np.asarray(w).astype(np.float64, copy=False))
    total = float(mag.sum())
    return min(1.0, float(mag[mask].sum()) / total) if total > 0 else 1.0


def prune_elementwise(w: Any, sparsity: float = 0.75, *, name: str = "weight") -> LayerPlan:
    """Baseline: unstructured magnitude pruning of ``sparsity`` of the elements (same API)."""
    w = _as_weight(w, name)
    s = check_sparsity(sparsity, name)
    mag = np.abs(w).ravel()
    n_prune = count_pruned_blocks(mag.size, s)
    mask = np.ones(mag.size, dtype=bool)
    mask[np.argsort(mag, kind="stable")[:n_prune]] = False
    mask = mask.reshape(w.shape)
    return LayerPlan(
        mask=mask,
        perms=tuple(np.arange(n, dtype=np.int64) for n in w.shape),
        block_size=(1,) * w.ndim,
        retained_l1=retained_fraction(w, mask),
        sparsity=s,
        method="element",
    )
