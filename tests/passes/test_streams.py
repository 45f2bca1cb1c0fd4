"""Shared permutations along channel streams (residual adds, fan-out, gating, embeddings).

Every model here is compared with the masked dense reference; the stream plans must also
leave the runtime gathers they promise (none, unless the stream is a model output).
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import tvm
from tvm import relax

from tetris_tvm.frontend import bind_weights, import_model
from tetris_tvm.passes import FoldPermutations, TetrisPrune, plan_graph
from tetris_tvm.passes._dataflow import const_lookup
from tetris_tvm.passes.layer_sites import find_layers
from tetris_tvm.passes.streams import find_streams


class Residual(nn.Module):
    """inp -> [up -> gelu -> down] + skip -> layer norm -> head (or the stream itself)."""

    def __init__(self, d=64, hidden=96, head=True):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10) if head else None

    def forward(self, x):
        h = self.inp(x)
        h = self.norm(h + self.down(torch.nn.functional.gelu(self.up(h))))
        return self.head(h) if self.head is not None else h


class InputStream(nn.Module):
    """The stream starts at the model input: storing it permuted costs one gather there."""

    def __init__(self, d=64, hidden=96):
        super().__init__()
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)
        self.up2 = nn.Linear(d, hidden)
        self.down2 = nn.Linear(hidden, d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = x + self.down(torch.relu(self.up(x)))
        x = x + self.down2(torch.relu(self.up2(x)))
        return self.head(x)


class FanOut(nn.Module):
    """A 3-D stream from the input to the output, read by three layers after a layer norm."""

    def __init__(self, d=64):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, d)
        self.c = nn.Linear(d, d)

    def forward(self, x):
        h = self.norm(x)
        return x + self.a(h) * self.b(h) + self.c(h)


class Embedded(nn.Module):
    """An embedding table starts the stream (the BERT pattern): its table is stored permuted."""

    def __init__(self, d=48):
        super().__init__()
        self.emb = nn.Embedding(40, d)
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)
        self.head = nn.Linear(d, 7)

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(h)


class Gated(nn.Module):
    """SwiGLU: gate and up are joined by a multiply, so they share their output order."""

    def __init__(self, d=32, hidden=80):
        super().__init__()
        self.gate = nn.Linear(d, hidden)
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)

    def forward(self, x):
        return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))


class ConvResidual(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.a = nn.Conv2d(c, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.b(torch.relu(self.a(h))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def _build(model, inputs, streams="auto", plan=None, sparsity=0.5, block=(16, 16)):
    """``((plan, stream report), runtime gathers, output)``; a given plan is only applied
    (its report is empty)."""
    im = import_model(model, tuple(torch.from_numpy(i) for i in inputs))
    report = []
    if plan is None:
        plan, report = plan_graph(im.mod, im.weights, im.torch_names, sparsity=sparsity,
                                   block_size=block, streams=streams)
    mod = bind_weights(TetrisPrune(plan, im.weights, im.torch_names)(im.mod), im.weights)
    fold = FoldPermutations()
    mod = relax.transform.DeadCodeElimination()(fold(mod))
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(i) for i in inputs]).numpy()
    return (plan, report), fold.runtime_gathers, out


def _reference(model, plan, inputs):
    ref = copy.deepcopy(model)
    ref.load_state_dict(plan.masked_state_dict(model))
    with torch.no_grad():
        return ref.eval()(*[torch.from_numpy(i) for i in inputs]).numpy()


def _stream_axes_agree(plan, producers, consumers):
    orders = [plan[n].perms[0] for n in producers] + [plan[n].perms[1] for n in consumers]
    return all(np.array_equal(orders[0], o) for o in orders[1:]), orders[0]


@pytest.fixture(scope="module")
def residual():
    torch.manual_seed(0)
    return Residual().eval(), [np.random.default_rng(0).standard_normal((5, 64), np.float32)]


def test_find_streams_sees_the_residual_stream(residual):
    model, inputs = residual
    im = import_model(model, (torch.from_numpy(inputs[0]),))
    an = find_layers(im.mod["main"], im.torch_names)
    streams = find_streams(an, const_lookup(im.weights))
    main = [s for s in streams if s.joins]
    assert len(main) == 1
    st = main[0]
    assert sorted(s.torch_name for s in st.producers) == ["down.weight", "inp.weight"]
    assert sorted(s.torch_name for s in st.consumers) == ["head.weight", "up.weight"]
    assert st.roots == [] and st.leaks == [] and st.broken is None
    hidden = [s for s in streams if s.channels == 96]
    assert [s.joins for s in hidden] == [0]  # up -> gelu -> down: a plain pair


def test_auto_shares_the_stream_when_it_keeps_more_and_folds_away(residual):
    model, inputs = residual
    (sep_plan, sep_report), sep_gathers, sep_out = _build(model, inputs, streams="separate")
    (plan, report), gathers, out = _build(model, inputs, streams="auto")
    (rec,) = report
    assert rec["choice"] == "shared" and rec["runtime_gathers_shared"] == 0
    assert rec["retained_l1_shared"] > rec["retained_l1_separate"]
    assert sep_report == []
    agree, order = _stream_axes_agree(plan, ["inp.weight", "down.weight"],
                                      ["up.weight", "head.weight"])
    assert agree and not np.array_equal(order, np.arange(order.size))
    # the pair up/down still shares its hidden axis
    assert np.array_equal(plan["up.weight"].perms[0], plan["down.weight"].perms[1])
    members = ["inp.weight", "up.weight", "down.weight", "head.weight"]
    mean = np.mean([plan[n].retained_l1 for n in members])
    assert mean == pytest.approx(rec["retained_l1_shared"])
    assert mean > np.mean([sep_plan[n].retained_l1 for n in members])
    assert gathers == 0 and sep_gathers == 0
    np.testing.assert_allclose(out, _reference(model, plan, inputs), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(sep_out, _reference(model, sep_plan, inputs), rtol=1e-4,
                               atol=1e-5)


def test_a_given_shared_plan_is_rewritten_in_stream_order(residual):
    model, inputs = residual
    (plan, _), _, _ = _build(model, inputs, streams="auto")
    _, gathers, out = _build(model, inputs, plan=plan)
    assert gathers == 0
    np.testing.assert_allclose(out, _reference(model, plan, inputs), rtol=1e-4, atol=1e-5)


def test_a_stream_that_is_the_output_needs_shared_to_accept_a_gather():
    torch.manual_seed(1)
    model = Residual(head=False).eval()
    inputs = [np.random.default_rng(1).standard_normal((3, 64), np.float32)]
    (_, auto_report), auto_gathers, _ = _build(model, inputs, streams="auto")
    (rec,) = auto_report
    assert rec["choice"] == "separate" and "gather" in rec["reason"]
    assert rec["runtime_gathers_shared"] == 1 and auto_gathers == 0
    (shared_plan, shared_report), gathers, out = _build(model, inputs, streams="shared")
    assert shared_report[0]["choice"] == "shared"
    assert gathers == 1
    np.testing.assert_allclose(out, _reference(model, shared_plan, inputs), rtol=1e-4,
                               atol=1e-5)


def test_a_stream_from_the_model_input_costs_exactly_one_gather():
    torch.manual_seed(5)
    model = InputStream().eval()
    inputs = [np.random.default_rng(5).standard_normal((4, 64), np.float32)]
    (_, auto_report), auto_gathers, _ = _build(model, inputs, streams="auto")
    (rec,) = [r for r in auto_report if r["joins"]]
    assert rec["runtime_gathers_shared"] == 1 and rec["choice"] == "separate"
    assert auto_gathers == 0
    (shared_plan, _), gathers, out = _build(model, inputs, streams="shared")
    assert gathers == 1
    np.testing.assert_allclose(out, _reference(model, shared_plan, inputs), rtol=1e-4,
                               atol=1e-5)


def test_a_gather_that_cannot_sink_is_made_once_not_once_per_reader():
    torch.manual_seed(6)
    model = FanOut().eval()
    inputs = [np.random.default_rng(6).standard_normal((2, 5, 64), np.float32)]
    (plan, report), gathers, out = _build(model, inputs, streams="shared")
    (rec,) = report
    assert rec["choice"] == "shared" and rec["joins"] == 3
    # one gather where the input enters the stream, one where the stream leaves as the
    # output; FoldPermutations must not copy the first into each of the three readers
    assert rec["runtime_gathers_shared"] == 2 and gathers == 2
    np.testing.assert_allclose(out, _reference(model, plan, inputs), rtol=1e-4, atol=1e-5)


def test_an_embedding_table_is_stored_in_stream_order():
    torch.manual_seed(2)
    model = Embedded().eval()
    ids = np.random.default_rng(2).integers(0, 40, (2, 9)).astype(np.int64)
    (plan, report), gathers, out = _build(model, [ids], streams="shared", block=(16, 16))
    (rec,) = report
    assert rec["choice"] == "shared" and rec["runtime_gathers_shared"] == 0
    assert gathers == 0
    np.testing.assert_allclose(out, _reference(model, plan, [ids]), rtol=1e-4, atol=1e-5)


def test_gated_branches_share_their_output_order():
    torch.manual_seed(3)
    model = Gated().eval()
    inputs = [np.random.default_rng(3).standard_normal((4, 32), np.float32)]
    (plan, report), gathers, out = _build(model, inputs, streams="auto")
    rec = [r for r in report if r["channels"] == 80]
    assert rec and rec[0]["layers"] == ["down.weight", "gate.weight", "up.weight"]
    assert rec[0]["choice"] == "shared"
    agree, _ = _stream_axes_agree(plan, ["gate.weight", "up.weight"], ["down.weight"])
    assert agree
    assert gathers == 0
    np.testing.assert_allclose(out, _reference(model, plan, inputs), rtol=1e-4, atol=1e-5)


def test_conv_residual_stream():
    torch.manual_seed(4)
    model = ConvResidual().eval()
    inputs = [np.random.default_rng(4).standard_normal((2, 3, 8, 8), np.float32)]
    (plan, report), gathers, out = _build(model, inputs, streams="auto", block=(8, 8))
    (rec,) = [r for r in report if r["joins"]]
    assert rec["layers"] == ["a.weight", "b.weight", "fc.weight", "stem.weight"]
    assert rec["runtime_gathers_shared"] == 0
    assert gathers == 0
    np.testing.assert_allclose(out, _reference(model, plan, inputs), rtol=1e-4, atol=1e-5)


def test_bad_streams_mode():
    with pytest.raises(ValueError, match="streams must be one of"):
        plan_graph(None, {}, {}, streams="both")  # checked before the module is read
