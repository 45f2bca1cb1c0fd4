"""The fused CPU attention kernel against a numpy reference: masks (bool-style -inf, float,
broadcast over batch / heads / query rows), a fully masked row (0, as torch gives), odd sizes
that take the narrow-vector and scalar paths, a value dim unlike the key dim, custom scale."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from kernel_helpers import cpu_target

from tetris_tvm.kernels.attention import attention, fast_exp


def reference(q, k, v, bias, scale):
    """softmax(q k^T * scale + bias) v in (batch, seq, heads, dim) layout; masked rows -> 0."""
    qh, kh, vh = (t.transpose(0, 2, 1, 3).astype(np.float64) for t in (q, k, v))
    s = qh @ kh.transpose(0, 1, 3, 2) * scale
    if bias is not None:
        s = s + bias
    top = s.max(-1, keepdims=True)
    e = np.exp(s - np.where(np.isinf(top), 0.0, top))
    total = e.sum(-1, keepdims=True)
    p = e / np.where(total > 0, total, 1.0)
    return (p @ vh).transpose(0, 2, 1, 3)


def run(q_shape, kv_len, v_dim, bias=None, scale=None, seed=0):
    rng = np.random.default_rng(seed)
    b, s, h, d = q_shape
    q = rng.standard_normal(q_shape).astype(np.float32)
    k = rng.standard_normal((b, kv_len, h, d)).astype(np.float32)
    v = rng.standard_normal((b, kv_len, h, v_dim)).astype(np.float32)
    func = attention(q_shape, kv_len, v_dim, scale=scale,
                     bias_shape=None if bias is None else bias.shape)
    lib = tvm.compile(func, target=cpu_target())
    out = tvm.runtime.tensor(np.full((b, s, h, v_dim), np.nan, np.float32))
    args = [q, k, v] + ([bias.astype(np.float32)] if bias is not None else [])
    lib(*[tvm.runtime.tensor(a) for a in args], out)
    want = reference(q, k, v, bias, 1 / np.sqrt(d) if scale is None else scale)
    return out.numpy(), want


def padding_mask(rng, shape, masked=0.3):
    return np.where(rng.random(shape) < masked, -np.inf, 0.0).astype(np.float32)


@pytest.mark.parametrize("q_shape,kv_len,v_dim", [
    ((2, 16, 3, 8), 16, 8),      # 16-wide keys, 8-wide values
    ((1, 7, 2, 5), 7, 3),        # scalar paths, a ragged tile of query rows
    ((2, 9, 2, 32), 24, 64),     # 8-wide keys, value dim != key dim, kv_len != seq
    ((1, 1, 1, 4), 4, 4),        # one query
    ((3, 12, 4, 16), 128, 16),   # several key tiles
])
def test_matches_reference_without_mask(q_shape, kv_len, v_dim):
    got, want = run(q_shape, kv_len, v_dim)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("bias_axes", [(1, 1, 1, 1), (1, 0, 1, 1), (0, 0, 1, 1), (1, 0, 0, 1),
                                       (0, 0, 0, 1)])
def test_broadcast_masks(bias_axes):
    b, s, h, t = 2, 10, 3, 16
    full = (b, h, s, t)
    shape = tuple(n if keep else 1 for n, keep in zip(full, bias_axes, strict=True))
    rng = np.random.default_rng(1)
    bias = padding_mask(rng, shape) + rng.standard_normal(shape).astype(np.float32)
    bias[..., 0] = 0.0  # every row keeps a key
    got, want = run((b, s, h, 8), t, 8, bias=bias)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_fully_masked_rows_give_zero():
    rng = np.random.default_rng(2)
    bias = padding_mask(rng, (2, 1, 8, 16))
    bias[:, :, 3, :] = -np.inf  # query row 3 sees nothing
    bias[1, :, 5, :] = -np.inf
    got, want = run((2, 8, 2, 8), 16, 8, bias=bias)
    assert np.all(got[:, 3] == 0.0) and np.all(got[1, 5] == 0.0)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_custom_scale_and_large_scores():
    got, want = run((1, 8, 2, 16), 16, 16, scale=3.0)  # scores far beyond exp's easy range
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_rejects_a_bias_that_does_not_broadcast():
    with pytest.raises(ValueError, match="does not broadcast"):
        attention((2, 8, 2, 8), 16, 8, bias_shape=(2, 2, 8, 15))


def test_fast_exp():
    from tvm.script import tirx as T
    from tvm.script.ir_builder import IRBuilder
    from tvm.tirx.script.builder import ir as TB

    with IRBuilder() as ib:
        with TB.prim_func(s_tir=True):
            TB.func_name("main")
            x = TB.arg("x", T.Buffer((64,), "float32"))
            y = TB.arg("y", T.Buffer((64,), "float32"))
            with T.serial(0, 4) as i:
                T.buffer_store(y, fast_exp(x.vload([i * 16], "float32x16")),
                               [T.ramp(i * 16, 1, 16)])
    lib = tvm.compile(ib.get(), target=cpu_target())
    xs = np.linspace(-87, 88, 64).astype(np.float32)
    xs[:3] = [-np.inf, -1000.0, -88.5]
    out = tvm.runtime.tensor(np.zeros(64, np.float32))
    lib(tvm.runtime.tensor(xs), out)
    got = out.numpy()
    assert np.all(got[:3] == 0.0)
    np.testing.assert_allclose(got[3:], np.exp(xs[3:].astype(np.float64)), rtol=2e-6)


def _host_dots() -> list[str]:
    """The dot-product forms this machine runs (the generic one always)."""
    from tetris_tvm.kernels.int8 import dot_for_target

    best = dot_for_target(cpu_target()).name
    order = ["vnni", "avx512bw", "avx2"]
    return [*(order[order.index(best):] if best in order else []), "generic"]


@pytest.mark.parametrize("dot", _host_dots())
@pytest.mark.parametrize("q_shape,kv_len,v_dim,masked", [
    ((2, 16, 3, 8), 16, 8, True),     # a fully masked row
    ((2, 12, 2, 32), 24, 64, False),  # 8-wide keys, value dim != key dim
    ((1, 5, 1, 4), 4, 4, True),       # 4-wide vectors, a ragged tile of query rows
])
def test_int8_kernel_equals_its_fake_quantised_reference(dot, q_shape, kv_len, v_dim, masked):
    import torch

    from tetris_tvm.kernels.attention import attention_int8, int8_attention_fits
    from tetris_tvm.kernels.int8 import DOTS
    from tetris_tvm.quantization import fake_quantize_attention

    if not int8_attention_fits(q_shape[3], kv_len, v_dim, DOTS[dot]):
        pytest.skip(f"{dot} has no lane count for these sizes")
    rng = np.random.default_rng(3)
    b, s, h, d = q_shape
    q = rng.standard_normal(q_shape).astype(np.float32)
    k = rng.standard_normal((b, kv_len, h, d)).astype(np.float32)
    v = rng.standard_normal((b, kv_len, h, v_dim)).astype(np.float32)
    bias = None
    if masked:
        bias = padding_mask(rng, (b, 1, s, kv_len))
        bias[..., 0] = 0.0
        bias[0, :, 1, :] = -np.inf
    spec = DOTS[dot]
    lib = tvm.compile(attention_int8(q_shape, kv_len, v_dim, spec,
                                     bias_shape=None if bias is None else bias.shape),
                      target=cpu_target())
    out = tvm.runtime.tensor(np.full((b, s, h, v_dim), np.nan, np.float32))
    lib(*[tvm.runtime.tensor(a) for a in (q, k, v) + ((bias,) if masked else ())], out)

    def heads(a):
        return torch.from_numpy(a).transpose(1, 2)

    want = fake_quantize_attention(heads(q), heads(k), heads(v),
                                   None if bias is None else torch.from_numpy(bias),
                                   qmin=spec.qmin, qmax=spec.qmax).transpose(1, 2).numpy()
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
    if masked:
        assert np.all(out.numpy()[0, 1] == 0.0)
    # and int8 stays close to float32 attention
    exact = reference(q, k, v, bias, 1 / np.sqrt(d))
    assert np.abs(out.numpy() - exact).max() < 0.05 * np.abs(exact).max()


def test_int8_kernel_refuses_sizes_it_cannot_take():
    from tetris_tvm.kernels.attention import attention_int8, int8_attention_fits
    from tetris_tvm.kernels.int8 import DOTS

    assert not int8_attention_fits(6, 16, 8, DOTS["vnni"])  # dim not a multiple of 4
    assert not int8_attention_fits(8, 6, 8, DOTS["vnni"])  # kv_len not a multiple of 4
    with pytest.raises(ValueError, match="multiples of 4"):
        attention_int8((1, 4, 1, 6), 16, 8, DOTS["vnni"])
