"""Latency-budget allocation (tetris_tvm.latency): budgets, the kernel-time cache, the
multiple-choice allocation, the spec's checks, and a compiled plan that meets its budget as
predicted and computes its masked reference."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import tetris_tvm
from tetris_tvm.latency import (
    LatencyTable,
    Option,
    TimingCache,
    allocate_latency,
    budget_seconds,
    layer_signature,
    measure_latency,
    parse_latency,
)

# ----------------------------------------------------------------------------------- budgets


def test_budgets_are_fractions_or_milliseconds():
    assert parse_latency(0.5) == ("fraction", 0.5)
    assert parse_latency(1) == ("fraction", 1.0)
    assert parse_latency(" 20ms") == ("ms", 20.0)
    assert budget_seconds(0.25, 0.08) == pytest.approx(0.02)
    assert budget_seconds("12.5ms", 1.0) == pytest.approx(0.0125)
    for bad in (0, 1.5, -0.1, "fast", "0ms", "nanms", True, None, [0.5]):
        with pytest.raises(ValueError, match="latency"):
            parse_latency(bad)


# ----------------------------------------------------------------------------------- cache


def test_timing_cache_round_trip_and_unreadable_files(tmp_path):
    path = tmp_path / "sub" / "latency.json"
    sig = layer_signature(torch.nn.Linear(8, 4), (3, 8))
    key = TimingCache.key("ctx", sig, Option((4, 4), 0.5))
    assert key != TimingCache.key("other", sig, Option((4, 4), 0.5))
    assert key != TimingCache.key("ctx", sig, Option((4, 1), 0.5))
    assert key != TimingCache.key("ctx", sig, None)
    cache = TimingCache.open(path)
    cache.put(key, 1e-3)
    cache.save()
    assert TimingCache.open(path).get(key) == pytest.approx(1e-3)
    path.write_text("{not json")
    assert TimingCache.open(path).entries == {}
    assert TimingCache.open(None).get(key) is None


def test_conv_signature_has_its_geometry():
    a = layer_signature(torch.nn.Conv2d(3, 8, 3, padding=1), (1, 3, 16, 16))
    b = layer_signature(torch.nn.Conv2d(3, 8, 3, padding=0), (1, 3, 16, 16))
    assert a != b and a["padding"] == [1, 1]
    json.dumps(a)


def test_measure_latency_times_each_distinct_kernel_once_and_caches(tmp_path):
    modules = {"a.weight": torch.nn.Linear(16, 32), "b.weight": torch.nn.Linear(16, 32),
               "c.weight": torch.nn.Linear(32, 16)}
    shapes = {"a.weight": (4, 16), "b.weight": (4, 16), "c.weight": (4, 32)}
    opts = {n: [Option((8, 4), 0.5), Option((8, 4), 0.75)] for n in modules}
    calls = []

    def time_layer(module, shape, option):
        calls.append((tuple(module.weight.shape), option))
        kept = 1.0 if option is None else 1.0 - option.sparsity
        return 1e-3 * kept * module.weight.numel() / 512

    cache = TimingCache.open(tmp_path / "t.json")
    table = measure_latency(list(modules), modules, shapes, opts, time_layer, lambda o: 0.01,
                            context="x", cache=cache)
    assert len(calls) == 6  # a and b share a signature: 2 signatures x (dense + 2 options)
    assert table.dense_layers["a.weight"] == table.dense_layers["b.weight"] == 1e-3
    assert table.layers["c.weight"][Option((8, 4), 0.75)] == pytest.approx(0.25e-3)
    assert table.fixed == pytest.approx(0.01 - 3e-3)
    again = measure_latency(list(modules), modules, shapes, opts, time_layer, lambda o: 0.01,
                            context="x", cache=TimingCache.open(tmp_path / "t.json"))
    assert len(calls) == 6 and again.layers == table.layers
    measure_latency(list(modules), modules, shapes, opts, time_layer, lambda o: 0.01,
                    context="y", cache=TimingCache.open(tmp_path / "t.json"))
    assert len(calls) == 12  # another target / precision measures anew


def test_two_whole_builds_calibrate_the_prediction():
    names = ["a.weight", "b.weight"]
    ref = Option((8, 4), 0.5)
    dense = {n: 2e-3 for n in names}
    layers = {n: {ref: 1e-3, Option((8, 4), 0.75): 0.5e-3} for n in names}
    # in the model each kernel takes 1.2x its time alone, and 3 ms are outside the layers
    table = LatencyTable(3e-3 + 1.2 * 4e-3, dense, layers, {n: ref for n in names},
                         3e-3 + 1.2 * 2e-3)
    assert table.scale == pytest.approx(1.2) and table.fixed == pytest.approx(3e-3)
    choice = {"a.weight": Option((8, 4), 0.75), "b.weight": None}
    assert table.predict(choice) == pytest.approx(3e-3 + 1.2 * (0.5e-3 + 2e-3))
    plain = LatencyTable(3e-3 + 1.2 * 4e-3, dense, layers)
    assert plain.scale == 1.0 and plain.fixed == pytest.approx(3e-3 + 0.8e-3)
    noisy = LatencyTable(5e-3, dense, layers, {n: ref for n in names}, 5.5e-3)  # slower
    assert noisy.scale == 1.0  # an implausible fit falls back to the plain prediction


def test_measure_latency_times_the_reference_build_when_every_layer_has_it(tmp_path):
    modules = {"a.weight": torch.nn.Linear(16, 32)}
    opts = {"a.weight": [Option((8, 4), 0.5)]}
    seen = []

    def time_model(option):
        seen.append(option)
        return 0.01 if option is None else 0.0094

    table = measure_latency(["a.weight"], modules, {"a.weight": (4, 16)}, opts,
                            lambda m, s, o: 1e-3 if o is None else 0.5e-3, time_model,
                            context="x", cache=TimingCache.open(None),
                            reference={"a.weight": Option((8, 4), 0.5)})
    assert seen == [None, Option((8, 4), 0.5)]
    assert table.scale == pytest.approx(1.2) and table.fixed == pytest.approx(0.0088)
    seen.clear()
    measure_latency(["a.weight"], modules, {"a.weight": (4, 16)}, opts,
                    lambda m, s, o: 1e-3, time_model, context="x", cache=TimingCache.open(None),
                    reference={"a.weight": Option((8, 8), 0.5)})  # not an option: no build
    assert seen == [None]


# ------------------------------------------------------------------------------ allocation


def _table(rng, layers=4):
    names = [f"l{i}.weight" for i in range(layers)]
    shapes = [(32, 4), (16, 4), (32, 1)]
    speed = {(32, 4): 1.0, (16, 4): 1.1, (32, 1): 1.6}  # 32x1 is slow (an int8 build)
    dense = {n: float(rng.uniform(1, 3)) * 1e-3 for n in names}
    layers, costs = {}, {}
    for n in names:
        layers[n], costs[n] = {}, {}
        w = float(rng.uniform(0.2, 2.0))
        for b in shapes:
            for s in (0.25, 0.5, 0.75, 0.875):
                o = Option(b, s)
                layers[n][o] = dense[n] * (0.1 + speed[b] * (1 - s))
                costs[n][o] = w * s ** 2 * {(32, 4): 1.0, (16, 4): 0.8, (32, 1): 0.6}[b]
    return LatencyTable(sum(dense.values()) * 1.5, dense, layers), costs


def _total_cost(costs, choice):
    return sum(0.0 if o is None else costs[n][o] for n, o in choice.items())


@pytest.mark.parametrize("fraction", [0.55, 0.7, 0.85])
def test_allocation_meets_the_budget_at_the_least_cost(fraction):
    table, costs = _table(np.random.default_rng(1), layers=3)
    budget = fraction * table.dense_model
    choice = allocate_latency(costs, table, budget)
    assert table.predict(choice) <= budget + 1e-12
    # brute force over every combination (13 ways per layer)
    names = list(costs)
    ways = [[None, *costs[n]] for n in names]
    best = min(_total_cost(costs, dict(zip(names, c, strict=True)))
               for c in itertools.product(*ways)
               if table.predict(dict(zip(names, c, strict=True))) <= budget + 1e-12)
    assert _total_cost(costs, choice) <= best * 1.05 + 1e-12


def test_allocation_prefers_the_cheap_shape_when_it_costs_no_time():
    table, costs = _table(np.random.default_rng(2))
    for n in costs:  # 16x4 as fast as 32x4 and better: 32x4 must never be chosen
        for s in (0.25, 0.5, 0.75, 0.875):
            table.layers[n][Option((16, 4), s)] = table.layers[n][Option((32, 4), s)]
    choice = allocate_latency(costs, table, 0.6 * table.dense_model)
    assert all(o is None or o.block != (32, 4) for o in choice.values())


def test_a_loose_budget_keeps_everything_dense_and_an_impossible_one_is_refused():
    table, costs = _table(np.random.default_rng(3))
    assert all(o is None for o in allocate_latency(costs, table, table.dense_model).values())
    with pytest.raises(ValueError, match="cannot be met"):
        allocate_latency(costs, table, 0.1 * table.fixed)


# ------------------------------------------------------------------------------------ spec


def test_spec_checks_latency_options():
    spec = tetris_tvm.PruningSpec(latency=0.5)
    assert spec.recovery(True)[2] == "latency" and spec.prunes
    assert spec.candidate_blocks == ((32, 4), (16, 4), (32, 1))
    assert tetris_tvm.PruningSpec(latency="9ms", blocks=[(8, 4), 16]).blocks == (
        (8, 4), (16, 16))
    assert tetris_tvm.PruningSpec(latency=0.5, blocks=(8, 4)).blocks == ((8, 4),)
    assert tetris_tvm.PruningSpec(latency=0.5, block_size=(16, 1)).candidate_blocks == (
        (16, 1),)
    with pytest.raises(ValueError, match="not both"):
        tetris_tvm.PruningSpec(latency=0.5, sparsity=0.5)
    with pytest.raises(ValueError, match="needs latency"):
        tetris_tvm.PruningSpec(allocation="latency")
    with pytest.raises(ValueError, match="not allocation='sensitivity'"):
        tetris_tvm.PruningSpec(latency=0.5, allocation="sensitivity")
    with pytest.raises(ValueError, match="give latency"):
        tetris_tvm.PruningSpec(blocks=[(8, 4)])
    with pytest.raises(ValueError, match="latency"):
        tetris_tvm.PruningSpec(latency=2.0)


def test_prune_refuses_a_latency_budget_with_the_way_out():
    m = torch.nn.Sequential(torch.nn.Linear(16, 16))
    with pytest.raises(ValueError, match="tetris_tvm.compile or tetris_tvm.plan_model"):
        tetris_tvm.prune(m, latency=0.5, calibration=[torch.randn(8, 16)])
    with pytest.raises(ValueError, match="calibration"):
        tetris_tvm.compile(m, (torch.randn(8, 16),), latency=0.5)
    with pytest.raises(ValueError, match="must run on this machine"):
        tetris_tvm.compile(m, (torch.randn(8, 16),), target="cuda", latency=0.5,
                           calibration=[torch.randn(8, 16)])
    with pytest.raises(ValueError, match="gradual pruning trains to a sparsity"):
        tetris_tvm.GradualPruner(m, tetris_tvm.PruningSpec(latency=0.5), steps=10)


# ----------------------------------------------------------------------------- end to end


def test_compiled_latency_plan_meets_its_predicted_budget_and_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("TETRIS_TVM_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 192), torch.nn.ReLU(),
                                torch.nn.Linear(192, 48)).eval()
    x = torch.randn(40, 64)
    calibration = [torch.randn(40, 64) for _ in range(4)]
    with pytest.warns(UserWarning):  # few calibration rows for the refit
        cm = tetris_tvm.compile(model, (x,), calibration=calibration, latency=0.7,
                                blocks=[(16, 4), (8, 1)], progress=False)
    info = cm.plan.settings["latency"]
    assert info["predicted_ms"] <= info["budget_ms"] * (1 + 1e-9)
    assert info["budget_ms"] == pytest.approx(0.7 * info["dense_ms"])
    assert set(info["choices"]) == {"0.weight", "2.weight"}
    for name, lp in cm.plan.items():
        label = info["choices"][name]
        if label != "dense":
            assert tuple(lp.block_size) in {(16, 4), (8, 1)}
            assert label.endswith(f"{lp.block_size[0]}x{lp.block_size[1]}")
    assert (tmp_path / "latency.json").exists()
    reference = cm.plan.apply(__import__("copy").deepcopy(model))
    np.testing.assert_allclose(cm.run_numpy(x.numpy())[0], reference(x).detach().numpy(),
                               rtol=1e-4, atol=1e-4)
