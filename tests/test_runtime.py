"""Calling a compiled or loaded model: inputs checked in our words, zero-copy where safe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tetris_tvm


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(50, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 10)).eval()
    x = torch.randn(4, 50)
    cm = tetris_tvm.compile(model, (x,), sparsity=0.5, block_size=(16, 16), progress=False)
    reference = cm.plan.apply(model, keep=False)
    return cm, reference, x


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.randn(4, 51), r"input 'input': expected shape \(4, 50\) float32, got \(4, 51\)$"),
        (torch.randn(5, 50), r"got \(5, 50\); the batch size is fixed.*dynamic_batch=True"),
        (torch.randn(4, 50).double(), r"expected dtype float32, got float64; convert it"),
        (np.zeros((4, 50), np.int64), r"expected dtype float32, got int64"),
        ("not a tensor", r"expected a tensor or array of \(4, 50\) float32, got str"),
    ],
)
def test_wrong_inputs_are_errors_that_name_the_input(mlp, bad, message):
    cm, _, _ = mlp
    with pytest.raises(ValueError, match=message):
        cm(bad)


def test_wrong_number_of_inputs(mlp):
    cm, _, x = mlp
    with pytest.raises(ValueError, match=r"expected 1 inputs \(input\), got 2"):
        cm(x, x)


def test_inputs_of_every_layout_give_the_masked_reference(mlp):
    cm, reference, x = mlp
    want = reference(x).detach()
    wide = torch.randn(4, 100)
    wide[:, ::2] = x  # a strided view: copied, not shared
    unaligned = np.empty(4 * 50 + 1, np.float32)[1:].reshape(4, 50)  # not 64-byte aligned
    unaligned[:] = x.numpy()
    for given in (x, x.numpy(), wide[:, ::2], unaligned):
        got = cm(given)
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_outputs_of_two_calls_do_not_alias(mlp):
    cm, _, x = mlp
    a = cm(x)
    a_copy = a.clone()
    b = cm(x * 2)
    torch.testing.assert_close(a, a_copy)  # the second call did not overwrite the first
    assert not torch.equal(a, b)


def test_dynamic_batch_bound_is_checked():
    model = torch.nn.Linear(32, 16).eval()
    cm = tetris_tvm.compile(model, (torch.randn(2, 32),), sparsity=0.5, block_size=(16, 16),
                            dynamic_batch=8, progress=False)
    assert cm(torch.randn(5, 32)).shape == (5, 16)
    with pytest.raises(ValueError, match=r"batch 9 is above the bound 8"):
        cm(torch.randn(9, 32))
    with pytest.raises(ValueError, match=r"expected shape \(N, 32\) float32, got \(3, 31\)"):
        cm(torch.randn(3, 31))


def test_loaded_model_checks_inputs_and_bad_files(mlp, tmp_path):
    cm, reference, x = mlp
    path = cm.export(tmp_path / "m.so")
    loaded = tetris_tvm.load(path)
    np.testing.assert_allclose(loaded(x.numpy()), reference(x).detach().numpy(), rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match=r"expected shape \(4, 50\) float32, got \(4, 51\)"):
        loaded(np.zeros((4, 51), np.float32))
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"not a library")
    with pytest.raises(ValueError, match=r"bad.so: not a shared library \(no ELF header\)"):
        tetris_tvm.load(bad)
    with pytest.raises(FileNotFoundError):
        tetris_tvm.load(tmp_path / "missing.so")


def test_bench_samplers_return_seconds_per_call(mlp):
    """The sampler makers of tetris_tvm.bench: zero-argument callables returning seconds."""
    import time

    import tvm
    from tvm import te

    from tetris_tvm import bench

    calls, syncs = [], []
    sample = bench.wall_sampler(lambda: calls.append(1), 3, sync=lambda: syncs.append(1))
    assert sample() >= 0.0 and len(calls) == 3 and len(syncs) == 2
    assert bench.torch_sampler(lambda: time.sleep(0.002), 2)() >= 0.002
    assert bench.torch_sampler(lambda: time.sleep(0.002), 1, "cpu")() >= 0.002

    a = te.placeholder((64,), "float32", name="a")
    b = te.compute((64,), lambda i: a[i] * 2.0, name="b")
    lib = tvm.compile(te.create_prim_func([a, b]), target="llvm")
    x = np.arange(64, dtype=np.float32)
    out = tvm.runtime.tensor(np.zeros(64, np.float32))
    t = bench.tvm_sampler(lib.mod, [x, out], tvm.cpu(), 5)()  # numpy arguments copied once
    assert isinstance(t, float) and t > 0.0
    np.testing.assert_array_equal(out.numpy(), 2 * x)

    cm, _, xt = mlp
    cm._ensure_vm()
    args = [tvm.runtime.tensor(xt.numpy(), cm.device)]
    times = bench.median_interleaved({"vm": bench.vm_sampler(cm.vm, args, cm.device, 2)}, repeats=3)
    assert times["vm"] > 0.0
