import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from tetris_tvm import assignment
from tetris_tvm.assignment import assign_to_groups

BACKENDS = ["numpy"] + (["c"] if assignment._c_auction is not None else [])


def _optimum(cost, cap):
    expanded = np.repeat(cost, cap, axis=1)
    r, c = linear_sum_assignment(expanded, maximize=True)
    return expanded[r, c].sum()


def _random_problem(rng, n, block, density):
    groups = -(-n // block)
    cap = np.full(groups, block)
    cap[-1] = n - (groups - 1) * block
    a = np.abs(rng.standard_normal((n, groups)))
    mask = rng.random((groups, groups)) < density
    return a @ mask.T.astype(float), cap


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,block", [(64, 8), (100, 8), (130, 32), (257, 16)])
def test_matches_linear_sum_assignment(backend, n, block):
    rng = np.random.default_rng(n)
    cost, cap = _random_problem(rng, n, block, 0.3)
    res = assign_to_groups(cost, cap, backend=backend)
    assert np.array_equal(np.bincount(res.groups, minlength=cap.size), cap)
    opt = _optimum(cost, cap)
    assert res.value == pytest.approx(cost[np.arange(n), res.groups].sum())
    # within the documented gap: rel_tol times the value of one index
    assert opt - res.value <= 1e-2 * np.ptp(cost) + 1e-9
    assert res.upper_bound >= opt - 1e-9


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_and_single_group(backend):
    cost = np.ones((10, 2))
    res = assign_to_groups(cost, np.array([4, 6]), backend=backend)
    assert np.array_equal(np.bincount(res.groups), [4, 6])
    res = assign_to_groups(np.random.default_rng(0).random((5, 1)), np.array([5]))
    assert (res.groups == 0).all()


def test_warm_start_gives_same_optimum():
    rng = np.random.default_rng(1)
    cost, cap = _random_problem(rng, 200, 16, 0.4)
    cold = assign_to_groups(cost, cap)
    nudged = cost + 0.01 * rng.random(cost.shape)
    warm = assign_to_groups(nudged, cap, warm_start=cold)
    fresh = assign_to_groups(nudged, cap)
    assert warm.value == pytest.approx(fresh.value, rel=1e-6, abs=1e-2 * np.ptp(nudged))


def test_bad_capacities():
    with pytest.raises(ValueError, match="sum to"):
        assign_to_groups(np.zeros((4, 2)), np.array([1, 1]))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 60),
    block=st.integers(1, 16),
    seed=st.integers(0, 10_000),
)
def test_property_optimal(n, block, seed):
    block = min(block, n)
    cost, cap = _random_problem(np.random.default_rng(seed), n, block, 0.5)
    res = assign_to_groups(cost, cap)
    assert np.array_equal(np.bincount(res.groups, minlength=cap.size), cap)
    assert _optimum(cost, cap) - res.value <= 1e-2 * np.ptp(cost) + 1e-9
