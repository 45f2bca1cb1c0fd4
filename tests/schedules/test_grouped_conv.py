"""The GroupedConv2d CPU rule: depthwise / grouped convs with their epilogue, against torch."""

from __future__ import annotations

import pytest
import torch
import tvm
from kernel_helpers import cpu_target

import tetris_tvm
from tetris_tvm.compiler import lower_model
from tetris_tvm.schedules.cpu.grouped_conv import GroupedConv2d, row_vector


def _block(cin, cout, groups, stride, dilation=1, bias=False, bn=True, act=True):
    layers = [torch.nn.Conv2d(cin, cout, 3, stride, dilation, dilation=dilation, groups=groups,
                              bias=bias)]
    if bn:
        layers.append(torch.nn.BatchNorm2d(cout))
    if act:
        layers.append(torch.nn.ReLU6())
    m = torch.nn.Sequential(*layers).eval()
    if bn:
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.data.normal_()
    return m


def _conv_funcs(mod):
    return [f for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint]


CASES = {
    "depthwise_112_s1": (dict(cin=8, cout=8, groups=8, stride=1), (1, 8, 112, 112)),
    "depthwise_odd_s2": (dict(cin=6, cout=6, groups=6, stride=2), (2, 6, 13, 13)),
    "depthwise_even_s2": (dict(cin=6, cout=6, groups=6, stride=2), (1, 6, 14, 14)),
    "depthwise_7_bias_no_bn": (dict(cin=16, cout=16, groups=16, stride=1, bias=True, bn=False),
                               (3, 16, 7, 7)),
    "depthwise_dilated": (dict(cin=4, cout=4, groups=4, stride=1, dilation=2), (1, 4, 20, 20)),
    "grouped_2x_multiplier": (dict(cin=8, cout=16, groups=4, stride=1), (1, 8, 10, 10)),
    "no_epilogue": (dict(cin=5, cout=5, groups=5, stride=1, bn=False, act=False),
                    (1, 5, 9, 9)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_grouped_conv_matches_torch_and_is_taken_by_the_rule(name):
    kw, shape = CASES[name]
    torch.manual_seed(0)
    m = _block(**kw)
    x = torch.randn(*shape)
    lowered = lower_model(m, (x,), sparsity=0.0, progress=False)
    (func,) = _conv_funcs(lowered.mod)
    assert GroupedConv2d().apply(func, cpu_target(), False) is not None, "the rule declined"
    cm = tetris_tvm.compile(m, (x,), sparsity=0.0, progress=False)
    (got,) = cm.run_numpy(x.numpy())
    with torch.no_grad():
        ref = m(x)
    torch.testing.assert_close(torch.as_tensor(got), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("hw", "halves"), [(14, True), (13, False)])
def test_stride_two_reads_a_deinterleaved_plane_when_its_width_is_even(hw, halves):
    m = _block(cin=4, cout=4, groups=4, stride=2)
    lowered = lower_model(m, (torch.randn(1, 4, hw, hw),), sparsity=0.0, progress=False)
    (func,) = _conv_funcs(lowered.mod)
    sch = GroupedConv2d().apply(func, cpu_target(), False)
    pad = sch.get(sch.get_sblock("pad_temp")).writes[0].source
    # (n, c, h, w) -> (n, c, h, w % 2, w // 2): even columns, then odd ones
    assert (len(pad.shape) == 5) == halves


def test_rule_declines_other_kernels():
    m = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, groups=4), torch.nn.AdaptiveAvgPool2d(1))
    lowered = lower_model(m.eval(), (torch.randn(1, 4, 8, 8),), sparsity=0.0, progress=False)
    pools = [f for gv, f in lowered.mod.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" not in gv.name_hint]
    assert pools
    for f in pools:
        assert GroupedConv2d().apply(f, cpu_target(), False) is None


@pytest.mark.parametrize(("width", "lanes", "want"),
                         [(7, 16, 7), (14, 8, 14), (28, 16, 28), (56, 16, 28), (112, 16, 28),
                          (112, 8, 16), (97, 8, 1)])
def test_row_vector_divides_the_row(width, lanes, want):
    v = row_vector(width, lanes)
    assert v == want and width % v == 0 and v <= max(width, 2 * lanes)
