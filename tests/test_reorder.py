import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tetris_tvm import prune_weight
from tetris_tvm.reorder import LayerPlan, count_pruned_blocks, prune_elementwise


def _blocks_are_uniform(lp: LayerPlan) -> bool:
    """Under the permutations, every (bo x bi) block of the mask is all kept or all pruned."""
    m = lp.permuted(lp.mask)
    mm = m.reshape(m.shape[0], m.shape[1], -1)
    if not (mm.all(axis=2) | ~mm.any(axis=2)).all():  # window axes must be whole
        return False
    plane = mm[:, :, 0]
    bo, bi = lp.block_size[:2]
    for r in range(0, plane.shape[0], bo):
        for c in range(0, plane.shape[1], bi):
            blk = plane[r : r + bo, c : c + bi]
            if blk.any() and not blk.all():
                return False
    return True


def _expected_pruned(shape, block, sparsity):
    g = [-(-shape[0] // block[0]), -(-shape[1] // block[1])]
    return count_pruned_blocks(g[0] * g[1], sparsity)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("solver", ["assign", "swap"])
@pytest.mark.parametrize(
    "shape,block", [((64, 96), (16, 32)), ((70, 45), (8, 8)), ((33, 17), (32, 16))]
)
def test_mask_structure_and_count(solver, shape, block):
    w = _rand(shape)
    lp = prune_weight(w, block, 0.6, solver=solver)
    assert lp.mask.shape == w.shape and lp.mask.dtype == bool
    assert _blocks_are_uniform(lp)
    assert lp.n_blocks - lp.kept_blocks == _expected_pruned(shape, block, 0.6)
    for axis, p in enumerate(lp.perms):
        assert np.array_equal(np.sort(p), np.arange(w.shape[axis]))
    mag = np.abs(w.astype(np.float64))
    assert lp.retained_l1 == pytest.approx((mag * lp.mask).sum() / mag.sum())


def test_reorder_never_worse_than_block_pruning():
    for seed in range(4):
        w = _rand((96, 64), seed) * np.random.default_rng(seed).random((96, 1))
        base = prune_weight(w, 16, 0.75, reorder=False)
        for solver in ("assign", "swap"):
            lp = prune_weight(w, 16, 0.75, solver=solver)
            assert lp.retained_l1 >= base.retained_l1 - 1e-9
        assert base.method == "block" and all(
            np.array_equal(p, np.arange(n)) for p, n in zip(base.perms, w.shape, strict=True)
        )


def test_reorder_recovers_hidden_block_structure():
    # a weight that IS block-sparse after an unknown permutation: TETRIS must find it
    rng = np.random.default_rng(0)
    blocks = rng.random((8, 8)) < 0.25
    dense = np.kron(blocks, np.ones((8, 8))) * (1.0 + rng.random((64, 64)))
    w = dense[rng.permutation(64)][:, rng.permutation(64)] + 1e-3 * rng.random((64, 64))
    w = w.astype(np.float32)
    n_kept = int(blocks.sum())
    sparsity = 1 - n_kept / 64
    base = prune_weight(w, 8, sparsity, reorder=False)
    lp = prune_weight(w, 8, sparsity)
    assert lp.retained_l1 > 0.95
    assert lp.retained_l1 > base.retained_l1 + 0.3


def test_deterministic():
    w = _rand((80, 48), 3)
    a = prune_weight(w, 16, 0.5)
    b = prune_weight(w, 16, 0.5)
    assert np.array_equal(a.mask, b.mask)
    assert all(np.array_equal(x, y) for x, y in zip(a.perms, b.perms, strict=True))


def test_conv_weight_blocks_over_channels_only():
    w = _rand((48, 24, 3, 3))
    lp = prune_weight(w, (8, 8), 0.5)
    assert lp.block_size == (8, 8, 3, 3)
    assert lp.mask.shape == w.shape
    assert np.array_equal(lp.perms[2], np.arange(3)) and np.array_equal(lp.perms[3], np.arange(3))
    # the whole kernel window is kept or pruned together
    flat = lp.mask.reshape(48, 24, 9)
    assert (flat.all(axis=2) | ~flat.any(axis=2)).all()
    assert _blocks_are_uniform(lp)
    assert lp.n_blocks - lp.kept_blocks == _expected_pruned(w.shape, (8, 8), 0.5)


def test_sparsity_zero_keeps_everything():
    w = _rand((40, 40))
    lp = prune_weight(w, 8, 0.0)
    assert lp.mask.all() and lp.retained_l1 == pytest.approx(1.0)


def test_near_one_keeps_one_block():
    w = _rand((64, 64))
    lp = prune_weight(w, 16, 0.999)
    assert lp.kept_blocks == 1
    assert lp.mask.sum() == 16 * 16


def test_block_zero_means_whole_axis():
    w = _rand((30, 64))
    lp = prune_weight(w, (0, 16), 0.5)
    assert lp.block_size == (30, 16)
    assert lp.n_blocks == 4 and lp.kept_blocks == 2


def test_balanced_rows_keep_equal_counts():
    w = _rand((64, 128)) * np.random.default_rng(1).random((1, 128)) ** 3
    lp = prune_weight(w, 16, 0.75, balanced=True)
    assert (lp.block_mask.sum(axis=1) == 2).all()
    unbalanced = prune_weight(w, 16, 0.75)
    assert unbalanced.retained_l1 >= lp.retained_l1 - 1e-9
    assert _blocks_are_uniform(lp)


def test_permute_flags_fix_axes():
    w = _rand((64, 64))
    lp = prune_weight(w, 16, 0.5, permute=(False, True))
    assert np.array_equal(lp.perms[0], np.arange(64))


def test_elementwise_baseline_is_an_upper_bound():
    w = _rand((64, 64))
    el = prune_elementwise(w, 0.75)
    assert el.mask.sum() == 64 * 64 - count_pruned_blocks(64 * 64, 0.75)
    assert el.retained_l1 >= prune_weight(w, 16, 0.75).retained_l1


def test_torch_tensor_input():
    torch = pytest.importorskip("torch")
    w = torch.randn(32, 16)
    lp = prune_weight(w, 8, 0.5)
    assert lp.mask.shape == (32, 16)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"sparsity": 1.0}, "sparsity must be in"),
        ({"sparsity": -0.1}, "sparsity must be in"),
        ({"sparsity": "x"}, "sparsity must be a number"),
        ({"block_size": -1}, "negative"),
        ({"block_size": (8, 65)}, "larger than the axis"),
        ({"block_size": (8, 8, 8)}, "pair"),
        ({"solver": "magic"}, "solver"),
    ],
)
def test_bad_arguments_name_layer_and_value(kwargs, match):
    args = {"block_size": 8, "sparsity": 0.5} | kwargs
    with pytest.raises(ValueError, match=match) as e:
        prune_weight(_rand((64, 64)), name="fc1.weight", **args)
    assert "fc1.weight" in str(e.value)


def test_bad_weights():
    with pytest.raises(ValueError, match="not floating point"):
        prune_weight(np.ones((8, 8), dtype=np.int32), 4, 0.5, name="w")
    bad = _rand((8, 8))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN/Inf"):
        prune_weight(bad, 4, 0.5)
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="NaN/Inf"):
        prune_weight(bad, 4, 0.5)
    with pytest.raises(ValueError, match="at least 2 axes"):
        prune_weight(np.ones(8, dtype=np.float32), 4, 0.5)


def test_state_roundtrip():
    lp = prune_weight(_rand((20, 12, 3, 3)), (8, 4), 0.5)
    back = LayerPlan.from_state(lp.to_state())
    assert np.array_equal(back.mask, lp.mask)
    assert back.block_size == lp.block_size and back.retained_l1 == lp.retained_l1
    assert all(np.array_equal(a, b) for a, b in zip(back.perms, lp.perms, strict=True))


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(2, 70),
    cols=st.integers(2, 70),
    bo=st.integers(1, 20),
    bi=st.integers(1, 20),
    sparsity=st.floats(0.0, 0.95),
    balanced=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_property_structure(rows, cols, bo, bi, sparsity, balanced, seed):
    bo, bi = min(bo, rows), min(bi, cols)
    w = _rand((rows, cols), seed)
    lp = prune_weight(w, (bo, bi), sparsity, balanced=balanced)
    base = prune_weight(w, (bo, bi), sparsity, reorder=False, balanced=balanced)
    assert _blocks_are_uniform(lp)
    assert lp.retained_l1 >= base.retained_l1 - 1e-9
    if not balanced:
        assert lp.n_blocks - lp.kept_blocks == _expected_pruned((rows, cols), (bo, bi), sparsity)
    else:
        assert len(set(lp.block_mask.sum(axis=1).tolist())) == 1


def test_coupled_layers_share_one_order():
    from tetris_tvm.reorder import prune_coupled

    rng = np.random.default_rng(5)
    wa = _rand((96, 40), 1) * rng.random((96, 1)) ** 2
    wb = _rand((24, 96), 2) * rng.random((1, 96)) ** 2
    pa, pb = prune_coupled(wa, wb, (16, 8), (8, 16), 0.75, 0.6, names=("up", "down"))
    assert np.array_equal(pb.perms[1], pa.perms[0])  # one storage order for the shared axis
    assert np.array_equal(pa.perms[1], np.arange(40)) and np.array_equal(pb.perms[0], np.arange(24))
    assert _blocks_are_uniform(pa) and _blocks_are_uniform(pb)
    assert pa.n_blocks - pa.kept_blocks == _expected_pruned(wa.shape, (16, 8), 0.75)
    assert pb.n_blocks - pb.kept_blocks == _expected_pruned(wb.shape, (8, 16), 0.6)
    ba = prune_weight(wa, (16, 8), 0.75, reorder=False).retained_l1
    bb = prune_weight(wb, (8, 16), 0.6, reorder=False).retained_l1
    assert pa.retained_l1 + pb.retained_l1 >= ba + bb - 1e-9
    with pytest.raises(ValueError, match="one block size"):
        prune_coupled(wa, wb, (16, 8), (8, 8), 0.5, 0.5)


def test_joint_stream_one_order_for_every_member():
    """A residual stream: two writers (output axis) and two readers (input axis), plus a
    private pair axis between a reader and a writer."""
    from tetris_tvm.reorder import JointMember, groups_from_perm, prune_joint

    rng = np.random.default_rng(7)
    d, h = 48, 64
    scale = rng.random(d) ** 3  # channels with small weights everywhere: worth grouping
    inp = _rand((d, 20), 1) * scale[:, None]
    up = _rand((h, d), 2) * scale[None, :]
    down = _rand((d, h), 3) * scale[:, None]
    head = _rand((10, d), 4) * scale[None, :]
    members = [
        JointMember("inp", inp, (16, 10), 0.5, ("stream", None)),
        JointMember("up", up, (16, 16), 0.5, ("pair", "stream")),
        JointMember("down", down, (16, 16), 0.5, ("stream", "pair")),
        JointMember("head", head, (5, 16), 0.5, (None, "stream")),
    ]
    plans = prune_joint(members)
    order = plans["inp"].perms[0]
    assert not np.array_equal(order, np.arange(d))
    for name, axis in (("up", 1), ("down", 0), ("head", 1)):
        assert np.array_equal(plans[name].perms[axis], order)
    assert np.array_equal(plans["up"].perms[0], plans["down"].perms[1])
    assert np.array_equal(plans["inp"].perms[1], np.arange(20))
    assert np.array_equal(plans["head"].perms[0], np.arange(10))
    for lp in plans.values():
        assert _blocks_are_uniform(lp)
    # never worse than the start: plain block pruning in the original order
    start = np.mean([prune_weight(m.weight, m.block_size, 0.5, reorder=False).retained_l1
                     for m in members])
    assert np.mean([lp.retained_l1 for lp in plans.values()]) > start
    # a given start order is kept unless something better is found
    init = {"stream": order, "pair": plans["up"].perms[0]}
    again = prune_joint(members, init=init, anneal=())
    kept = np.mean([lp.retained_l1 for lp in again.values()])
    assert kept >= np.mean([lp.retained_l1 for lp in plans.values()]) - 1e-9
    assert groups_from_perm(np.array([2, 0, 1, 3]), 2).tolist() == [0, 1, 0, 1]


def test_joint_rejects_a_stream_blocked_two_ways():
    from tetris_tvm.reorder import JointMember, prune_joint

    a = JointMember("a", _rand((32, 16), 1), (16, 16), 0.5, ("s", None))
    b = JointMember("b", _rand((16, 32), 2), (16, 8), 0.5, (None, "s"))
    with pytest.raises(ValueError, match="'s' is shared by a\\[0\\], b\\[1\\]"):
        prune_joint([a, b])
    with pytest.raises(ValueError, match="unique"):
        prune_joint([a, a])


def test_a_weight_whose_pruned_entries_are_zero_keeps_all_its_magnitude():
    """After fine-tuning the pruned weights are zero: the plan keeps everything, and a
    retained L1 one float64 step above 1 (from summing in another order) is still valid."""
    from dataclasses import replace

    from tetris_tvm.reorder import retained_fraction

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    lp = prune_weight(w, block_size=(32, 4), sparsity=0.5)
    trained = np.where(lp.mask, w, 0.0).astype(np.float32)
    assert retained_fraction(trained, lp.mask) == pytest.approx(1.0, abs=1e-12)
    assert retained_fraction(trained, lp.mask) <= 1.0
    assert replace(lp, retained_l1=1.0000000000000002).problem() is None
    assert replace(lp, retained_l1=1.01).problem() is not None
