"""PruningSpec: every option declared and checked once, taken by every entry point; the staged
compiler (lower -> build, tune on the same lowered model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import tetris_tvm
from tetris_tvm import PruningSpec


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(48, 64)
        self.fc2 = nn.Linear(64, 32)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return MLP().eval()


def _same_plan(a, b) -> None:
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name].mask, b[name].mask)
        for pa, pb in zip(a[name].perms, b[name].perms, strict=True):
            np.testing.assert_array_equal(pa, pb)


def test_spec_is_checked_when_made():
    with pytest.raises(ValueError, match="sparsity must be in"):
        PruningSpec(sparsity=1.0)
    with pytest.raises(ValueError, match="block_size"):
        PruningSpec(block_size="32")
    with pytest.raises(ValueError, match="importance must be one of"):
        PruningSpec(importance="gradient")
    with pytest.raises(ValueError, match="unknown override keys"):
        PruningSpec(overrides={"fc1.*": {"sparsty": 0.5}})
    with pytest.raises(ValueError, match="unknown prune option 'solvr'; did you mean 'solver'"):
        PruningSpec(prune_options={"solvr": "swap"})
    with pytest.raises(ValueError, match="not both"):
        PruningSpec(quantize="int8", dtype="float16")


def test_keyword_shortcuts_replace_fields_and_none_keeps_them():
    spec = PruningSpec(sparsity=0.5, block_size=16, importance="activation")
    same = spec.with_options(sparsity=None, block_size=None)
    assert same == spec
    changed = spec.with_options(sparsity=0.25, solver="swap", balanced=True)
    assert changed.sparsity == 0.25 and changed.block_size == 16
    assert changed.prune_options == {"solver": "swap", "balanced": True}
    assert spec.prune_options == {}  # frozen: the original is unchanged


@pytest.mark.parametrize("call", ["compile", "prune", "plan_model"])
def test_a_misspelt_option_is_named_the_same_way_everywhere(mlp, call):
    x = torch.randn(2, 48)
    run = {
        "compile": lambda: tetris_tvm.compile(mlp, (x,), sparsity=0.5, importnce="activation"),
        "prune": lambda: tetris_tvm.prune(mlp, 0.5, importnce="activation"),
        "plan_model": lambda: tetris_tvm.plan_model(mlp, (x,), 0.5, importnce="activation"),
    }[call]
    with pytest.raises(ValueError, match=rf"{call}: unknown option 'importnce'; did you mean "
                                         r"'importance'"):
        run()


def test_layer_settings_apply_every_matching_override_in_order():
    spec = PruningSpec(sparsity=0.5, block_size=(32, 32), overrides={
        "fc*": {"sparsity": 0.25}, "fc2.*": {"block_size": 8}, "skip.*": {"skip": True}})
    assert spec.layer_settings("fc1.weight", (64, 48)) == (0.25, (32, 32))
    assert spec.layer_settings("fc2.weight", (32, 64)) == (0.25, (8, 8))
    assert spec.layer_settings("other.weight", (16, 16)) == (0.5, (16, 16))  # clamped
    assert spec.layer_settings("skip.weight", (64, 64)) is None


def test_recovery_defaults_follow_calibration_and_whether_anything_is_pruned():
    assert PruningSpec().recovery(False) == ("magnitude", False, "uniform")
    assert PruningSpec().recovery(True) == ("activation", True, "sensitivity")
    assert PruningSpec(sparsity=0.0).recovery(True) == ("magnitude", False, "uniform")
    assert PruningSpec(allocation="uniform").recovery(True) == ("activation", True, "uniform")


def test_prune_and_plan_model_take_a_spec_or_its_keywords_alike(mlp):
    spec = PruningSpec(sparsity=0.5, block_size=16, overrides={"fc2.*": {"sparsity": 0.25}})
    _same_plan(tetris_tvm.prune(mlp, spec=spec),
               tetris_tvm.prune(mlp, 0.5, 16, overrides={"fc2.*": {"sparsity": 0.25}}))
    x = (torch.randn(2, 48),)
    planned = tetris_tvm.plan_model(mlp, x, spec=spec, progress=False)
    _same_plan(planned, tetris_tvm.plan_model(mlp, x, 0.5, 16, progress=False,
                                              overrides={"fc2.*": {"sparsity": 0.25}}))
    assert planned["fc2.weight"].kept_blocks == 6  # 8 blocks of 16x16, a quarter pruned


def test_lower_then_build_is_compile(mlp):
    x = torch.randn(3, 48)
    spec = PruningSpec(sparsity=0.5, block_size=16)
    lowered = tetris_tvm.lower(mlp, (x,), spec=spec, progress=False)
    built = tetris_tvm.build(lowered)
    compiled = tetris_tvm.compile(mlp, (x,), spec=spec, progress=False)
    _same_plan(built.plan, compiled.plan)
    reference = MLP()
    reference.load_state_dict(mlp.state_dict())
    compiled.plan.apply(reference)
    with torch.no_grad():
        want = reference(x).numpy()
    np.testing.assert_allclose(built(x).numpy(), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="build takes what tetris_tvm.lower returns"):
        tetris_tvm.build(compiled)


def test_tune_takes_a_lowered_model_and_nothing_else_with_it(mlp, tmp_path):
    x = torch.randn(3, 48)
    lowered = tetris_tvm.lower(mlp, (x,), sparsity=0.5, block_size=16, progress=False)
    with pytest.raises(ValueError, match="already fixes its inputs"):
        tetris_tvm.tune(lowered, (x,), work_dir=tmp_path)
    with pytest.raises(ValueError, match="already fixes its inputs"):
        tetris_tvm.tune(lowered, work_dir=tmp_path, sparsity=0.5)
    dynamic = tetris_tvm.lower(mlp, (x,), sparsity=0.5, block_size=16, dynamic_batch=True,
                               progress=False)
    with pytest.raises(ValueError, match="fixed shapes"):
        tetris_tvm.tune(dynamic, work_dir=tmp_path)


def test_a_plan_and_a_disagreeing_spec_are_refused(mlp):
    x = (torch.randn(2, 48),)
    plan = tetris_tvm.plan_model(mlp, x, 0.5, 16, progress=False)
    with pytest.raises(ValueError, match="plan was made at sparsity 0.5"):
        tetris_tvm.compile(mlp, x, plan=plan, spec=PruningSpec(sparsity=0.75))
    # a spec that only sets the precision (or nothing about blocks) goes with any plan
    cm = tetris_tvm.compile(mlp, x, plan=plan, spec=PruningSpec(allow_gathers=True))
    _same_plan(cm.plan, plan)


def test_allocated_sparsities_replace_the_global_and_override_ones():
    from tetris_tvm.plan import layer_settings

    overrides = {"fc*": {"sparsity": 0.25, "block_size": 8}}
    assert layer_settings("fc1.weight", 0.5, 32, overrides) == (0.25, 8, False)
    assert layer_settings("fc1.weight", 0.5, 32, overrides, {"fc1.weight": 0.9}) == (0.9, 8, False)
    assert layer_settings("fc2.weight", 0.5, 32, overrides, {"fc1.weight": 0.9}) == (0.25, 8, False)
