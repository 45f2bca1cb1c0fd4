"""Each pass on a small Relax module: what it emits and that the numbers stay exact."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import tvm
from tvm import relax

from tetris_tvm.frontend import bind_weights, import_model
from tetris_tvm.passes import (
    FoldPermutations,
    LowerBlockSparse,
    TetrisPrune,
    plan_graph,
    pruned_layers,
)
from tetris_tvm.passes._dataflow import op_name


class Chain(nn.Module):
    """fc1 -> relu -> fc2 -> gelu -> layernorm -> fc3: every permutation can fold away."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(40, 64)
        self.fc2 = nn.Linear(64, 48)
        self.ln = nn.LayerNorm(48)
        self.fc3 = nn.Linear(48, 10)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc3(self.ln(torch.nn.functional.gelu(self.fc2(h))))


def _ops(mod):
    return [op_name(b.value) for blk in mod["main"].body.blocks for b in blk.bindings]


def _run(mod, *inputs):
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(i) for i in inputs]).numpy()


def _masked_reference(model, plan, x):
    ref = type(model)()
    ref.load_state_dict(plan.masked_state_dict(model))
    with torch.no_grad():
        return ref.eval()(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def chain():
    torch.manual_seed(0)
    model = Chain().eval()
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    return model, x, import_model(model, (torch.from_numpy(x),))


@pytest.fixture(scope="module")
def chain_plan(chain):
    """The plan computed for the chain (one that folds away) and its stream report."""
    _, _, im = chain
    return plan_graph(im.mod, im.weights, im.torch_names, sparsity=0.5, block_size=(16, 16))


def test_planning_alone_returns_a_plan_and_leaves_the_module(chain):
    from tetris_tvm.plan import PruningPlan

    _, _, im = chain
    before = im.mod.script()
    plan, report = plan_graph(im.mod, im.weights, im.torch_names, sparsity=0.5,
                               block_size=(16, 16), progress=False)
    assert isinstance(plan, PruningPlan)
    assert set(plan) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert plan.settings["sparsity"] == 0.5 and plan.settings["block_size"] == [16, 16]
    assert report == []  # a chain has no stream worth sharing
    assert im.mod.script() == before
    assert not [f for f in im.mod.functions.values() if f.attrs and "Composite" in f.attrs]
    assert pruned_layers(im.mod) == []


def test_prune_records_the_layers_it_rewrote(chain, chain_plan):
    _, _, im = chain
    plan, _ = chain_plan
    tp = TetrisPrune(plan, im.weights, im.torch_names)
    mod = tp(im.mod)
    assert pruned_layers(mod) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    # later passes keep the record
    folded = FoldPermutations()(bind_weights(mod, im.weights))
    assert pruned_layers(folded) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    # a plan for one layer rewrites only that one; the others stay dense
    only = type(plan)(layers={"fc2.weight": plan["fc2.weight"]})
    assert pruned_layers(TetrisPrune(only, im.weights, im.torch_names)(im.mod)) == [
        "fc2.weight"
    ]
    # the pass hands nothing back through attributes
    for name in ("plan", "sites", "stream_report", "plan_module"):
        assert not hasattr(tp, name)


def test_prune_needs_a_plan(chain):
    _, _, im = chain
    with pytest.raises(TypeError, match="PruningPlan"):
        TetrisPrune(None, im.weights, im.torch_names)


def test_prune_emits_composites_and_gathers(chain, chain_plan):
    model, x, im = chain
    plan, _ = chain_plan
    mod = TetrisPrune(plan, im.weights, im.torch_names)(im.mod)
    assert set(plan) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    comps = [gv for gv, f in mod.functions.items() if f.attrs and "Composite" in f.attrs]
    assert len(comps) == 3
    assert "relax.take" in _ops(mod)
    # the model input and the model output are never permuted (nothing could absorb them)
    assert np.array_equal(plan["fc1.weight"].perms[1], np.arange(40))
    assert np.array_equal(plan["fc3.weight"].perms[0], np.arange(10))
    # fc2's input order is the order fc1's output is stored in
    assert np.array_equal(plan["fc2.weight"].perms[1], plan["fc1.weight"].perms[0])
    out = _run(bind_weights(mod, im.weights), x)
    np.testing.assert_allclose(out, _masked_reference(model, plan, x), rtol=1e-5, atol=1e-5)


def test_fold_removes_every_gather_in_a_chain(chain, chain_plan):
    model, x, im = chain
    plan, _ = chain_plan
    mod = bind_weights(TetrisPrune(plan, im.weights, im.torch_names)(im.mod), im.weights)
    fold = FoldPermutations()
    folded = relax.transform.DeadCodeElimination()(fold(mod))
    assert fold.runtime_gathers == 0
    assert int(folded.attrs["tetris.runtime_gathers"]) == 0
    assert "relax.take" not in _ops(folded)
    out = _run(folded, x)
    np.testing.assert_allclose(out, _masked_reference(model, plan, x), rtol=1e-5, atol=1e-5)


def test_fold_keeps_gathers_a_given_plan_needs(chain):
    """A plan that permutes the model input and output: two gathers must stay."""
    import tetris_tvm

    model, x, im = chain
    plan = tetris_tvm.prune(model, sparsity=0.5, block_size=16)  # both axes of every layer
    tp = TetrisPrune(plan, im.weights, im.torch_names)
    fold = FoldPermutations()
    mod = fold(bind_weights(tp(im.mod), im.weights))
    assert fold.runtime_gathers >= 2
    out = _run(mod, x)
    np.testing.assert_allclose(out, _masked_reference(model, plan, x), rtol=1e-5, atol=1e-5)


def test_fold_absorbs_gather_into_dense_weight():
    """take -> matmul with a constant weight: the permutation moves into the weight."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    perm = rng.permutation(6)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            g = bb.emit(relax.op.take(x, relax.const(perm.astype("int64")), axis=1))
            r = bb.emit(relax.op.nn.relu(g))
            y = bb.emit_output(relax.op.matmul(r, relax.const(w)))
        bb.emit_func_output(y)
    mod = bb.get()
    fold = FoldPermutations()
    out_mod = fold(mod)
    assert fold.runtime_gathers == 0 and "relax.take" not in _ops(out_mod)
    xv = rng.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(out_mod, xv), np.maximum(xv[:, perm], 0) @ w, rtol=1e-6)


def test_fold_composes_and_cancels_inverse_gathers():
    perm = np.random.default_rng(2).permutation(8)
    inv = np.argsort(perm)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((3, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.take(x, relax.const(perm.astype("int64")), axis=1))
            b = bb.emit(relax.op.add(a, relax.const(np.arange(8, dtype=np.float32))))
            c = bb.emit(relax.op.take(b, relax.const(inv.astype("int64")), axis=1))
            y = bb.emit_output(relax.op.nn.relu(c))
        bb.emit_func_output(y)
    fold = FoldPermutations()
    out_mod = fold(bb.get())
    assert fold.runtime_gathers == 0
    xv = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    expect = np.maximum(xv + np.arange(8, dtype=np.float32)[inv], 0)
    np.testing.assert_allclose(_run(out_mod, xv), expect, rtol=1e-6)


def test_lower_fuses_bias_and_activation(chain, chain_plan):
    model, x, im = chain
    plan, _ = chain_plan
    tp = TetrisPrune(plan, im.weights, im.torch_names)
    mod = FoldPermutations()(bind_weights(tp(im.mod), im.weights))
    lower = LowerBlockSparse()
    lowered = lower(relax.transform.DeadCodeElimination()(mod))
    assert not [f for f in lowered.functions.values() if f.attrs and "Composite" in f.attrs]
    fused = {layer.name: layer.fused for layer in lower.layers}
    assert fused == {"fc1.weight": "bias+relu", "fc2.weight": "bias+gelu", "fc3.weight": "bias"}
    assert all(layer.kernel in ("bsr_linear", "ell_linear") for layer in lower.layers)
    out = _run(lowered, x)
    np.testing.assert_allclose(out, _masked_reference(model, plan, x), rtol=1e-4, atol=1e-5)
