"""One-shot quality recovery: calibration checks, importance, reconstruction, allocation.

Every compiled model is compared with its masked reference: the model with the plan's
parameter values (refitted weights) and masks applied.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import tetris_tvm
from tetris_tvm import PruningPlan
from tetris_tvm.allocation import LayerCost, allocate
from tetris_tvm.calibration import as_batches, collect_grams, layer_modules, layer_stages
from tetris_tvm.importance import importance_scores
from tetris_tvm.reconstruct import refit_rows
from tetris_tvm.reorder import count_pruned_blocks


class MLP(nn.Module):
    def __init__(self, d=48, h=72, o=20):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, h, bias=False)
        self.fc3 = nn.Linear(h, o)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def _inputs(shape, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    # correlated, unevenly scaled inputs: where activation-aware importance matters
    scale = torch.linspace(0.1, 3.0, shape[-1] if len(shape) == 2 else shape[1])
    out = []
    for _ in range(n):
        x = torch.randn(*shape, generator=g)
        x = x * (scale if len(shape) == 2 else scale[None, :, None, None])
        out.append(x)
    return out


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP().eval()


@pytest.fixture
def cnn():
    torch.manual_seed(1)
    return CNN().eval()


# ---------------------------------------------------------------------------------------------
# calibration input checks


def test_bad_calibration_is_a_clear_value_error(mlp):
    with pytest.raises(ValueError, match="empty"):
        tetris_tvm.prune(mlp, 0.5, 8, calibration=[], reconstruct=True)
    with pytest.raises(ValueError, match="None"):
        as_batches(None)
    with pytest.raises(ValueError, match="single tensor"):
        tetris_tvm.prune(mlp, 0.5, 8, calibration=torch.randn(4, 48), reconstruct=True)
    bad = torch.randn(4, 48)
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tetris_tvm.prune(mlp, 0.5, 8, calibration=[bad], reconstruct=True)
    with pytest.raises(ValueError, match=r"could not run it.*\(4, 47\)"):
        tetris_tvm.prune(mlp, 0.5, 8, calibration=[torch.randn(4, 47)], reconstruct=True)
    with pytest.raises(ValueError, match="expected a torch tensor"):
        tetris_tvm.prune(mlp, 0.5, 8, calibration=[["text"]], reconstruct=True)
    with pytest.raises(ValueError, match="needs calibration data"):
        tetris_tvm.prune(mlp, 0.5, 8, reconstruct=True)
    with pytest.raises(ValueError, match="importance must be"):
        tetris_tvm.prune(mlp, 0.5, 8, calibration=_inputs((8, 48)), importance="wanda")


def test_padding_positions_are_left_out_of_the_statistics():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(6, 4))
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = lin

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids)

    model = Wrap()
    batches = as_batches([{"input_ids": x, "attention_mask": mask}])
    g = collect_grams(model, batches, layer_modules(model, ["inner.0.weight"]))["inner.0.weight"]
    rows = x[mask.bool()]
    rows = torch.cat([rows, torch.ones(rows.shape[0], 1)], 1).double()
    assert g.rows == 8
    np.testing.assert_allclose(g.gram, (rows.T @ rows).numpy(), rtol=1e-5)


def test_stages_group_layers_that_read_one_input():
    class QKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
            self.o = nn.Linear(8, 8)

        def forward(self, x):
            return self.o(self.q(x) * self.k(x) + self.v(x))

    m = QKV()
    names = ["q.weight", "k.weight", "v.weight", "o.weight"]
    stages = layer_stages(m, as_batches([torch.randn(3, 8)])[0], layer_modules(m, names))
    assert stages == [["q.weight", "k.weight", "v.weight"], ["o.weight"]]


# ---------------------------------------------------------------------------------------------
# importance


@pytest.mark.parametrize("kind", ["activation", "hessian"])
def test_activation_aware_plans_stay_block_structured(mlp, kind):
    cal = _inputs((32, 48))
    plan = tetris_tvm.prune(mlp, 0.5, (8, 8), calibration=cal, importance=kind)
    for name, lp in plan.items():
        assert plan.settings["importance"] == kind
        pm = lp.permuted(lp.mask)
        bo, bi = lp.block_size[:2]
        for r in range(0, pm.shape[0], bo):
            for c in range(0, pm.shape[1], bi):
                blk = pm[r:r + bo, c:c + bi]
                assert blk.all() or not blk.any(), name
        assert 0.0 < lp.retained_l1 <= 1.0
        w = dict(mlp.named_parameters())[name].detach().numpy()
        expect = np.abs(w)[lp.mask].sum() / np.abs(w).sum()  # of the weight, not the scores
        assert lp.retained_l1 == pytest.approx(expect, rel=1e-6)


def test_activation_importance_weights_by_input_scale():
    w = np.ones((4, 3), np.float32)
    x = torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]])
    lin = nn.Linear(3, 4, bias=False)
    m = nn.Sequential(lin)
    g = collect_grams(m, as_batches([x]), layer_modules(m, ["0.weight"]))["0.weight"]
    s = importance_scores(w, g, "activation")
    np.testing.assert_allclose(s[0], [1.0, 2.0, 0.0], atol=1e-6)
    assert np.all(importance_scores(-w, None, "magnitude") == 1.0)
    with pytest.raises(ValueError, match="needs calibration"):
        importance_scores(w, None, "hessian")


# ---------------------------------------------------------------------------------------------
# reconstruction


def test_refit_rows_never_worse_and_keeps_pruned_entries_zero():
    rng = np.random.default_rng(0)
    for _ in range(5):
        n, d, o = 200, 24, 16
        xd = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        xp = xd + 0.3 * rng.normal(size=(n, d))  # inputs after earlier pruned layers
        w = rng.normal(size=(o, d))
        keep = rng.random((o, d)) < 0.4
        keep[3] = False  # a row with nothing kept
        res = refit_rows(w, keep, xp.T @ xp, xp.T @ xd, xd.T @ xd, damp=0.01)
        assert np.all(res.weight[~keep] == 0.0)
        def err(m, xp=xp, xd=xd, w=w):
            return np.sum((xp @ m.T - xd @ w.T) ** 2, axis=0)

        assert np.all(err(res.weight) <= err(w * keep) + 1e-6 * err(w * keep).max())
        assert res.after <= res.before
        assert res.after == pytest.approx(err(res.weight).sum(), rel=1e-6)


def test_reconstruction_lowers_every_layer_error_and_holds_masks(mlp):
    cal = _inputs((64, 48), n=4)
    base = tetris_tvm.prune(mlp, 0.5, (8, 8), calibration=cal, reconstruct=False,
                            allocation="uniform")
    plan = tetris_tvm.prune(mlp, 0.5, (8, 8), calibration=cal, reconstruct=True,
                            allocation="uniform")
    assert set(plan.params) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc3.weight", "fc3.bias"}
    for name, lp in plan.items():
        np.testing.assert_array_equal(lp.mask, base[name].mask)  # masks fixed
        assert np.all(plan.params[name][~lp.mask] == 0.0)
    for row in plan.settings["reconstruction"]:
        assert row["relative_error_refit"] <= row["relative_error_masked"] + 1e-9
    # on held-out inputs of the same distribution the refitted model is closer to dense
    x = _inputs((256, 48), n=1, seed=7)[0]
    with torch.no_grad():
        dense = mlp(x)
        masked = base.apply(copy.deepcopy(mlp), keep=False)(x)
        refit = plan.apply(copy.deepcopy(mlp), keep=False)(x)
    assert (refit - dense).norm() < 0.8 * (masked - dense).norm()
    # the user's model is untouched
    assert not torch.equal(dict(mlp.named_parameters())["fc1.weight"],
                           torch.as_tensor(plan.params["fc1.weight"]))


def test_plan_with_params_saves_and_loads(mlp, tmp_path):
    plan = tetris_tvm.prune(mlp, 0.5, (8, 8), calibration=_inputs((32, 48)), reconstruct=True)
    plan.save(tmp_path / "p.npz")
    back = PruningPlan.load(tmp_path / "p.npz")
    assert set(back.params) == set(plan.params)
    for k in plan.params:
        np.testing.assert_array_equal(back.params[k], plan.params[k])
    m1 = plan.apply(copy.deepcopy(mlp), keep=False)
    m2 = back.apply(copy.deepcopy(mlp), keep=False)
    x = torch.randn(5, 48)
    with torch.no_grad():
        torch.testing.assert_close(m1(x), m2(x))


def test_masks_hold_while_training_a_reconstructed_plan(mlp):
    plan = tetris_tvm.prune(mlp, 0.75, (8, 8), calibration=_inputs((32, 48)), reconstruct=True)
    model = plan.apply(copy.deepcopy(mlp))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 48)).pow(2).mean().backward()
        opt.step()
    params = dict(model.named_parameters())
    for name, lp in plan.items():
        assert torch.all(params[name].detach()[torch.as_tensor(~lp.mask)] == 0)
    plan.remove()


# ---------------------------------------------------------------------------------------------
# allocation


def test_allocate_meets_the_target_exactly_and_prefers_cheap_layers():
    costs = [
        LayerCost("cheap", 64 * 64, 64, [0.25, 0.5, 0.75, 0.875], [0.001, 0.002, 0.004, 0.01]),
        LayerCost("dear", 64 * 64, 64, [0.25, 0.5, 0.75, 0.875], [0.05, 0.2, 0.5, 0.9]),
        LayerCost("mid", 128 * 64, 128, [0.25, 0.5, 0.75, 0.875], [0.01, 0.03, 0.09, 0.2]),
    ]
    for target in (0.1, 0.37, 0.5, 0.6):
        alloc = allocate(costs, target)
        pruned = sum(round(alloc[c.name] * c.blocks) for c in costs)
        assert pruned == round(target * sum(c.blocks for c in costs))
        for c in costs:  # what a layer plan then prunes is exactly the allocated count
            assert count_pruned_blocks(c.blocks, alloc[c.name]) == round(alloc[c.name] * c.blocks)
    alloc = allocate(costs, 0.5)
    assert alloc["cheap"] > alloc["mid"] > alloc["dear"]
    with pytest.raises(ValueError):
        allocate(costs, 1.0)


def test_sensitivity_allocation_meets_the_global_target_in_blocks():
    torch.manual_seed(0)
    model = MLP(o=24).eval()  # every block 8x8: the target is exact in blocks
    for target in (0.5, 0.75):
        plan = tetris_tvm.prune(model, target, (8, 8), calibration=_inputs((32, 48)),
                                allocation="sensitivity")
        pruned = sum(lp.n_blocks - lp.kept_blocks for lp in plan.values())
        total = sum(lp.n_blocks for lp in plan.values())
        assert pruned == round(target * total)
        sparsities = {round(1 - lp.kept_blocks / lp.n_blocks, 3) for lp in plan.values()}
        assert len(sparsities) > 1  # not uniform
    assert "sparsity" in plan.format_table()


def test_sensitivity_allocation_with_edge_blocks_meets_the_target_in_weights(mlp):
    # fc3 has 20 rows: its last block-row is 4 high, so the target holds to a block or two
    plan = tetris_tvm.prune(mlp, 0.5, (8, 8), calibration=_inputs((32, 48)),
                            allocation="sensitivity")
    pruned = sum(lp.mask.size - lp.mask.sum() for lp in plan.values())
    total = sum(lp.mask.size for lp in plan.values())
    assert abs(pruned - 0.5 * total) <= 2 * 64


# ---------------------------------------------------------------------------------------------
# compile equals the masked reference


def _check_compiled(model, plan, x):
    cm = tetris_tvm.compile(model, (x,), plan=plan)
    ref = plan.apply(copy.deepcopy(model), keep=False)
    with torch.no_grad():
        expect = ref(x)
    got = cm(x)
    scale = expect.abs().max()
    assert float((got - expect).abs().max() / scale) <= 1e-4
    return cm


@pytest.mark.parametrize("batch", [1, 5])
def test_compiled_reconstructed_mlp_equals_its_reference(mlp, batch):
    plan = tetris_tvm.prune(mlp, 0.5, (8, 8), calibration=_inputs((32, 48)), reconstruct=True)
    _check_compiled(mlp, plan, torch.randn(batch, 48))


def test_compiled_reconstructed_cnn_equals_its_reference(cnn):
    cal = _inputs((8, 3, 10, 10), n=3)
    plan = tetris_tvm.prune(cnn, 0.75, (8, 8), calibration=cal, reconstruct=True,
                            allocation="sensitivity")
    assert "c2.bias" in plan.params
    _check_compiled(cnn, plan, torch.randn(2, 3, 10, 10))


def test_compile_with_calibration_plans_foldable_permutations(mlp):
    x = torch.randn(4, 48)
    cal = _inputs((32, 48))
    cm = tetris_tvm.compile(mlp, (x,), sparsity=0.5, block_size=(8, 8), calibration=cal,
                            reconstruct=True, progress=False)
    assert cm.report.totals["runtime_gathers"] == 0
    assert cm.plan.params and cm.plan.settings["reconstruct"] is True
    ref = cm.plan.apply(copy.deepcopy(mlp), keep=False)
    with torch.no_grad():
        expect = ref(x)
    assert float((cm(x) - expect).abs().max() / expect.abs().max()) <= 1e-4
    # plan_model gives the same plan without building
    plan = tetris_tvm.plan_model(mlp, (x,), 0.5, (8, 8), calibration=cal, reconstruct=True,
                                 progress=False)
    for name in plan:
        np.testing.assert_array_equal(plan[name].mask, cm.plan[name].mask)
    with pytest.raises(ValueError, match="either plan= or the recovery options"):
        tetris_tvm.compile(mlp, (x,), plan=plan, calibration=cal)


def test_calibration_alone_turns_on_the_full_one_shot_recipe(mlp):
    cal = _inputs((32, 48))
    for plan in (tetris_tvm.prune(mlp, 0.5, (8, 8), calibration=cal),
                 tetris_tvm.plan_model(mlp, (torch.randn(4, 48),), 0.5, (8, 8),
                                       calibration=cal, progress=False)):
        assert plan.settings["reconstruct"] is True
        assert plan.settings["allocation"] == "sensitivity"
        assert plan.settings["importance"] == "activation"
    # an explicit choice wins; no calibration keeps plain magnitude pruning
    plan = tetris_tvm.prune(mlp, 0.5, (8, 8), calibration=cal, reconstruct=False,
                            allocation="uniform")
    assert plan.settings["reconstruct"] is False and plan.settings["allocation"] == "uniform"
    assert "allocation" not in tetris_tvm.prune(mlp, 0.5, (8, 8)).settings or \
        tetris_tvm.prune(mlp, 0.5, (8, 8)).settings["allocation"] == "uniform"


def test_far_output_warning_names_the_next_step(mlp):
    x = torch.randn(4, 48)
    with pytest.warns(UserWarning, match="Pass calibration"):
        tetris_tvm.compile(mlp, (x,), sparsity=0.95, block_size=(8, 8))
    with pytest.warns(UserWarning, match="one-shot recovery did not close the gap"):
        tetris_tvm.compile(mlp, (x,), sparsity=0.95, block_size=(8, 8),
                           calibration=_inputs((32, 48)), progress=False)


def test_holdout_split_keeps_a_quarter_back():
    from tetris_tvm.holdout import split_holdout

    fit, held = split_holdout(as_batches([torch.randn(4, 48) for _ in range(8)]))
    assert (len(fit), len(held)) == (6, 2)
    fit, held = split_holdout(as_batches([{"input_ids": torch.zeros(16, 5, dtype=torch.long),
                                           "attention_mask": torch.ones(16, 5)}]))
    assert fit[0].size == 12 and held[0].size == 4
    assert held[0].token_mask is None or held[0].token_mask.shape == (4, 5)
    assert split_holdout(as_batches([torch.randn(2, 48)]))[1] == []  # too small to split


def test_recovery_worse_than_plain_tetris_on_held_back_inputs_is_refused(mlp):
    from tetris_tvm.oneshot import prepare_recovery

    cal = _inputs((64, 48), n=4)
    setup = prepare_recovery(mlp, 0.5, (8, 8), calibration=cal)
    assert len(setup.batches) == 3 and len(setup.held) == 1  # recovery never sees one
    good = tetris_tvm.prune(mlp, 0.5, (8, 8), calibration=cal)
    check = good.settings["holdout_check"]
    assert "used" not in check and check["recovered"] <= check["plain"] and good.params
    # a "recovered" plan that broke the model loses to plain TETRIS and is replaced
    broken = good.with_params({k: np.zeros_like(v) for k, v in good.params.items()})
    with pytest.warns(UserWarning, match="did worse than plain magnitude TETRIS"):
        used = setup.keep_better(mlp, broken, lambda: tetris_tvm.prune(mlp, 0.5, (8, 8)))
    assert used.settings["holdout_check"]["used"] == "plain" and not used.params
    assert used.settings["reconstruct"] is False


def test_scarce_calibration_rows_are_warned_about(mlp):
    with pytest.warns(UserWarning, match="fewer calibration rows"):
        tetris_tvm.prune(mlp, 0.5, (8, 8), calibration=[torch.randn(16, 48)],
                         reconstruct=True, allocation="uniform")


def test_refit_with_a_dense_prior_tends_to_plain_pruning_as_damping_grows():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 10))
    x = rng.normal(size=(40, 10))
    keep = rng.random((6, 10)) < 0.5
    h = x.T @ x
    heavy = refit_rows(w, keep, h, damp=1e6, prior="dense").weight
    np.testing.assert_allclose(heavy, w * keep, atol=1e-3)
    light = refit_rows(w, keep, h, damp=1e-6, prior="dense")
    assert light.after < light.before  # little damping: the least-squares refit
    assert np.all(light.weight[~keep] == 0.0)
    with pytest.raises(ValueError, match="prior"):
        refit_rows(w, keep, h, prior="mean")


def test_calibration_for_a_dense_int8_build_only_sets_ranges(mlp, monkeypatch):
    import tetris_tvm.oneshot as oneshot

    def refuse(*a, **k):
        raise AssertionError("no recovery for a dense build")

    monkeypatch.setattr(oneshot, "prepare_recovery", refuse)
    x = torch.randn(4, 48)
    cm = tetris_tvm.compile(mlp, (x,), sparsity=0.0, quantize="int8", activations="static",
                            calibration=_inputs((32, 48)), overrides={"fc3.*": {"skip": True}})
    assert cm.plan.quantization and not cm.plan.params
