"""LowerBlockSparse: composites made by TetrisPrune -> ``call_tir`` to block-sparse kernels.

For every call of a ``tetris.linear`` / ``tetris.conv2d`` composite the pass packs the
composite's constant weight (already masked and in permuted storage order) as BSR (or the
static blocked-ELL form when every block-row keeps the same number of blocks), builds the
TensorIR kernel of :mod:`tetris_tvm.kernels.compute` for the call's shapes, and emits
``call_tir(kernel, [x, *weight constants, bias?])``. A following per-channel bias add and a
relu/gelu on it are fused into the kernel's epilogue when nothing else uses the intermediate
values. Layers that kept almost everything (density above ``dense_above``) use the dense kernel
of the same family instead. The composites are removed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ..attr_keys import Attr
from ..kernels import compute as K
from ..kernels.bsr import BSRMatrix
from ..kernels.compute import shape_dims
from ._dataflow import (
    const_value,
    gv_name,
    is_const,
    main_bindings,
    op_name,
    rebuild_main,
    same_dims,
    use_lists,
)
from .prune import COMPOSITE_CONV2D, COMPOSITE_LINEAR

__all__ = ["LOWERED_ATTR", "LowerBlockSparse", "LoweredLayer", "lowered_layers"]

LOWERED_ATTR = Attr.LOWERED_LAYERS
"""Module attribute where LowerBlockSparse records its layers (JSON, see lowered_layers)."""

DENSE_INT8_ROWS = 32
"""Outputs per register tile of a layer that runs the dense int8 kernel although its plan's
blocks are narrower (two AVX-512 vectors of int32: an 8-row block fills half of one)."""

_ACTIVATIONS = {"relax.nn.relu": "relu", "relax.nn.gelu": "gelu", "relax.nn.gelu_tanh": "gelu_tanh"}


@dataclass(frozen=True)
class LoweredLayer:
    """What LowerBlockSparse did with one layer (for the report)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    block: tuple[int, int]
    kept_blocks: int
    total_blocks: int
    kernel: str
    fused: str
    precision: str = "float32"


def _product_or_none(dims: Any) -> int | None:
    """The product of static dims (None when one is symbolic)."""
    out = 1
    for d in dims:
        if not isinstance(d, int):
            return None
        out *= d
    return out


def _composites(mod: tvm.IRModule) -> dict[str, relax.Function]:
    out = {}
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function) and func.attrs is not None:
            kind = func.attrs.get("Composite")
            if kind is not None and str(kind) in (COMPOSITE_LINEAR, COMPOSITE_CONV2D):
                out[gv_name(gv)] = func
    return out


def _known_shape(ty: Any, comp: relax.Function, x: Any) -> Any:
    """The type of a composite call, its shape rebuilt when Relax left it unknown.

    With a dynamic batch a linear's input can be ``(batch * 32, K)``: a parameter shape that
    binds no variable, so the call's shape is not deduced.  It is ``x``'s leading dims + N.
    """
    if getattr(ty, "shape", None) is not None:
        return ty
    if str(comp.attrs["Composite"]) != COMPOSITE_LINEAR:
        raise ValueError(f"cannot infer the output shape of {comp.attrs['tetris.layer']}")
    n = const_value(_composite_call(comp).args[1]).shape[1]  # weight (K, N)
    return relax.TensorType([*shape_dims(x.ty.shape)[:-1], n], str(x.ty.dtype))


def _composite_call(func: relax.Function) -> relax.Call:
    body = func.body
    if isinstance(body, relax.SeqExpr) and body.blocks:
        return body.blocks[-1].bindings[-1].value
    return body


@tvm.transform.module_pass(opt_level=0, name="LowerBlockSparse")
class LowerBlockSparse:
    """Lower the pruned-layer composites to block-sparse TensorIR kernels.

    Args:
        dense_above: layers whose kept-element fraction exceeds this use the dense kernel.
        fuse_epilogue: fuse bias add and relu/gelu into the kernel.
        dtype: ``"float32"``, or ``"float16"`` / ``"bfloat16"``: block-sparse linear and conv
            layers then store their weights in that type and run the half kernel (half
            operands, float32 accumulation), with casts of ``x`` and ``y`` around it; layers
            kept dense stay float32, and so do all layers with a dynamic batch.
        row_chunks: cut the rows of float32 block-sparse linears into chunks by
            :func:`tetris_tvm.kernels.compute.linear_row_chunk` (CPU targets: their schedule
            runs the chunks in parallel).
        dense_block_n: the output panel of the dense linear kernel's packed weight (its
            register tile's width: 32 gives the CPU schedule two AVX-512 vectors).
        quantization: a plan's ``quantization`` settings (:mod:`tetris_tvm.quantization`):
            the linear layers it names run the int8 kernels of :mod:`..kernels.int8` with the
            dot-product instruction it names, their inputs quantized per row first.
        threads: threads the int8 kernels split their work for.

    After running, :attr:`layers` lists what each layer became.
    """

    def __init__(
        self,
        dense_above: float = 0.95,
        fuse_epilogue: bool = True,
        dtype: str = "float32",
        row_chunks: bool = False,
        dense_block_n: int = 16,
        quantization: Mapping[str, Any] | None = None,
        threads: int = 1,
    ) -> None:
        from ..kernels.half import HALF_DTYPES

        if dtype not in ("float32", *HALF_DTYPES):
            raise ValueError(f"dtype must be 'float32' or one of {HALF_DTYPES}, got {dtype!r}")
        self.dense_above = dense_above
        self.fuse_epilogue = fuse_epilogue
        self.dtype = dtype
        self.row_chunks = row_chunks
        self.dense_block_n = dense_block_n
        self.quantization = dict(quantization or {})
        self.threads = threads
        self.layers: list[LoweredLayer] = []

    def transform_module(self, mod: tvm.IRModule, _ctx: Any) -> tvm.IRModule:
        comps = _composites(mod)
        if not comps:
            return mod
        func = mod["main"]
        bindings = main_bindings(func)
        uses = {var: len(users) for var, users in use_lists(bindings).items()}
        value_of = {b.var: b.value for b in bindings}
        uses[func.body.body] = uses.get(func.body.body, 0) + 1

        # constants reshaped/transposed by a binding (a conv bias is reshape(bias, [1, C, 1, 1]))
        folded: dict[Any, np.ndarray] = {}
        for b in bindings:
            v = b.value
            if op_name(v) == "relax.reshape" and is_const(v.args[0]):
                folded[b.var] = const_value(v.args[0]).reshape([int(d) for d in b.var.ty.shape])

        # plan the fusions on the original vars: composite call -> [bias add] -> [activation]
        consumer: dict[Any, tuple[Any, relax.Call]] = {}
        for b in bindings:
            if isinstance(b.value, relax.Call):
                for a in b.value.args:
                    if isinstance(a, relax.Var) and uses.get(a) == 1:
                        consumer[a] = (b.var, b.value)
        fused_into: dict[Any, Any] = {}  # var of the last fused op -> composite call var
        skipped: set[Any] = set()
        epilogue: dict[Any, tuple[np.ndarray | None, str | None, Any]] = {}
        for b in bindings:
            v = b.value
            if not (isinstance(v, relax.Call) and isinstance(v.op, relax.GlobalVar)):
                continue
            if gv_name(v.op) not in comps:
                continue
            last, bias, act = b.var, None, None
            out_ty = _known_shape(b.var.ty, comps[gv_name(v.op)], v.args[0])
            is_conv = int(out_ty.ndim) == 4 and "conv2d" in gv_name(v.op)
            channel = 1 if is_conv else int(out_ty.ndim) - 1
            if self.fuse_epilogue and last in consumer:
                nxt_var, nxt = consumer[last]
                bias = _bias_of(
                    nxt, last, channel, int(out_ty.ndim), int(out_ty.shape[channel]), folded
                )
                if bias is not None and isinstance(nxt_var, relax.DataflowVar):
                    skipped.add(last)
                    last = nxt_var
                else:
                    bias = None
            if self.fuse_epilogue and last in consumer:
                nxt_var, nxt = consumer[last]
                through: list[Any] = []
                # torch.export wraps a GELU in reshapes (2-D matmul, 3-D gelu): look through one
                if _keeps_channel(nxt, last, channel, out_ty) and nxt_var in consumer:
                    through = [nxt_var]
                    nxt_var, nxt = consumer[nxt_var]
                name = _activation_of(nxt)
                if name is not None and isinstance(nxt_var, relax.DataflowVar):
                    act = name
                    skipped.update([last, *through])
                    last = nxt_var
            fused_into[last] = b.var
            epilogue[b.var] = (bias, act, last)

        self.layers = []
        self._symbols: set[str] = set()
        self._shared: dict[Any, Any] = {}

        def rewrite(bb: relax.BlockBuilder, var: Any, value: Any, mapping: dict) -> Any:
            if var in skipped:
                return None  # fused into a kernel emitted later
            if var in fused_into:
                call_var = fused_into[var]
                call_value = value_of[call_var]
                x = mapping.get(call_value.args[0], call_value.args[0])
                comp = comps[gv_name(call_value.op)]
                bias, act, _ = epilogue[call_var]
                out_ty = _known_shape(call_var.ty, comp, call_value.args[0])
                out = self._lower(bb, comp, x, out_ty, bias, act)
                # a reshape was looked through (its shape is known); else same shape
                if var.ty.shape is not None and not same_dims(var.ty.shape, out_ty.shape):
                    out = relax.op.reshape(bb.emit(out), shape_dims(var.ty.shape))
                return out
            return value

        new = rebuild_main(mod, rewrite)
        for name in comps:
            gv = new.get_global_var(name)
            new = _without(new, gv)
        return new.with_attr(LOWERED_ATTR, json.dumps([asdict(la) for la in self.layers]))

    def _lower(
        self,
        bb: relax.BlockBuilder,
        comp: relax.Function,
        x: Any,
        out_ty: Any,
        bias: np.ndarray | None,
        act: str | None,
    ) -> relax.Call:
        layer = str(comp.attrs[Attr.LAYER])
        block = tuple(int(b) for b in comp.attrs[Attr.BLOCK])
        call = _composite_call(comp)
        x_shape = shape_dims(x.ty.shape)  # dim 0 symbolic with a dynamic batch
        out_shape = shape_dims(out_ty.shape)
        if str(comp.attrs["Composite"]) == COMPOSITE_LINEAR:
            w = const_value(call.args[1]).T  # (N, K), permuted storage order
            bsr = BSRMatrix.from_dense(w, (min(block[0], w.shape[0]), min(block[1], w.shape[1])))
            kind = "linear"
            if layer in self.quantization.get("layers", {}):
                return self._lower_int8(bb, layer, x, x_shape, out_shape, w, bsr, bias, act)
            if bsr.density > self.dense_above:
                bn = self.dense_block_n
                func = K.dense_linear(x_shape, w.shape[0], block_n=bn, bias=bias is not None,
                                      activation=act)
                consts = [K.pack_dense_weight(w, bn)]
                kernel = "dense_linear"
            elif self._half(bsr, x_shape):
                from ..kernels.half import block_sparse_linear_fp16

                return self._lower_half(
                    bb, layer, x, out_shape, bsr, bias, act, block, "linear", tuple(bsr.shape),
                    block_sparse_linear_fp16(
                        x_shape, bsr, bias=bias is not None, activation=act, dtype=self.dtype
                    ),
                )
            else:
                rows = _product_or_none(x_shape[:-1]) if self.row_chunks else None
                func = K.block_sparse_linear(
                    x_shape, bsr, bias=bias is not None, activation=act,
                    row_chunk=None if rows is None else K.linear_row_chunk(rows),
                )
                consts = K.linear_weight_args(bsr, None)
                kernel = str(func.attrs[K.KERNEL_ATTR])
            shape = tuple(w.shape)
        else:
            w4 = const_value(call.args[1])  # (O, I, kh, kw)
            a = call.attrs
            o, i, kh, kw = w4.shape
            w2 = w4.reshape(o, -1)
            bo, bi = min(block[0], o), min(block[1], i)
            bsr = BSRMatrix.from_dense(w2, (bo, bi * kh * kw))
            geo = dict(
                stride=[int(s) for s in a.strides],
                padding=[int(p) for p in a.padding][:2],
                dilation=[int(d) for d in a.dilation],
            )
            pads = [int(p) for p in a.padding]
            if len(pads) == 4 and (pads[0], pads[1]) != (pads[2], pads[3]):
                raise ValueError(f"{layer}: asymmetric conv padding {pads} is not supported")
            kind = "conv2d"
            if layer in self.quantization.get("layers", {}):
                conv = K.Conv2dGeometry(x_shape, w4.shape, **geo)
                return self._lower_int8(bb, layer, x, x_shape, out_shape, w2, bsr, bias, act,
                                        conv=(conv, tuple(int(d) for d in w4.shape)))
            if bsr.density <= self.dense_above and self._half_conv(x_shape):
                return self._lower_half(
                    bb, layer, x, out_shape, bsr, bias, act, block, "conv2d", tuple(w4.shape),
                    K.block_sparse_conv2d(
                        x_shape, bsr, (kh, kw), bias=bias is not None, activation=act,
                        dtype=self.dtype, **geo,
                    ),
                )
            if bsr.density > self.dense_above:
                func = K.dense_conv2d(
                    x_shape, w4.shape, bias=bias is not None, activation=act, **geo
                )
                consts = [K.pack_dense_weight(w2, 16)]
                kernel = "dense_conv2d"
            else:
                func = K.block_sparse_conv2d(
                    x_shape, bsr, (kh, kw), bias=bias is not None, activation=act, **geo
                )
                consts = K.conv2d_weight_args(bsr, None)
                kernel = str(func.attrs[K.KERNEL_ATTR])
            shape = tuple(w4.shape)
        if bias is not None:
            consts.append(np.ascontiguousarray(bias.reshape(-1), dtype=np.float32))
        gv = self._add_kernel(bb, func, kernel, layer, kind, shape, block, bsr, bias, act)
        args = [x, *(relax.const(c) for c in consts)]
        return relax.call_tir(gv, args, relax.TensorType(out_shape, str(out_ty.dtype)))

    def _lower_int8(self, bb, layer, x, x_shape, out_shape, w, bsr, bias, act,
                    conv: tuple[Any, tuple[int, ...]] | None = None) -> Any:
        """The int8 linear: quantize ``x`` per row, then the int8 kernel (dense when the
        layer kept almost everything). A conv (``conv``: its geometry and weight shape, ``w``
        the weight as ``(Cout, Cin*kh*kw)``) quantizes each image, gathers the quantized
        patches and runs the same kernel over them, which writes NCHW."""
        from ..kernels import int8 as K8

        q = self.quantization
        dot = K8.DOTS[q["dot"]]
        entry = q["layers"][layer]
        static = (float(entry["scale"]), int(entry["zero"])) if entry else None
        qw, scale = K8.quantize_weight(w)
        dense = bsr.density > self.dense_above
        block = tuple(bsr.block)
        if block[0] % min(dot.widths):  # a whole-axis block of an odd width: pad to lanes
            block = (-(-block[0] // min(dot.widths)) * min(dot.widths), block[1])
        # a dense layer is not bound by its plan's narrow blocks, while every thread keeps
        # block-rows of its own (the kernel's threads split the block-rows)
        if (dense and block[0] < DENSE_INT8_ROWS and not dot.gpu
                and w.shape[0] >= DENSE_INT8_ROWS * self.threads):
            block = (DENSE_INT8_ROWS, block[1])
        k = int(w.shape[1])
        kq = K8.padded_k(k, k if dense else block[1])
        if conv is None:
            rows_shape = tuple(int(d) for d in x_shape)
            operands = self._quantized_rows(bb, x, rows_shape, kq, static, dot)
        else:
            geo = conv[0]
            images = (int(geo.batch), geo.cin * geo.h * geo.w)
            flat = bb.emit(relax.op.reshape(x, images))
            quantized = self._quantized_rows(bb, flat, images, images[1], static, dot)
            rows_shape = (int(geo.batch) * geo.oh * geo.ow, k)
            gather = self._function(bb, ("im2col", images, conv[1], geo.stride, geo.padding,
                                         geo.dilation, kq, dot.name),
                                    "int8_im2col", lambda: K8.int8_im2col(geo, kq, dot))
            operands = self._tuple(bb, relax.call_tir(gather, quantized,
                                                      self._quantized_types(rows_shape, kq, dot)))
        args = K8.int8_linear_args(qw, scale, block, dense, bias,
                                   threads=1 if dot.gpu else self.threads)
        if dot.gpu:
            from ..kernels.int8_cuda import int8_linear_cuda

            func = int8_linear_cuda(rows_shape, w.shape[0], block, args[0].shape[0],
                                    dense=dense, bias=bias is not None, activation=act)
        else:
            func = K8.int8_linear(rows_shape, w.shape[0], block, args[0].shape[0], dot,
                                  dense=dense, bias=bias is not None, activation=act,
                                  threads=self.threads,
                                  pixels=None if conv is None else conv[0].oh * conv[0].ow)
        kernel = str(func.attrs[K.KERNEL_ATTR])
        kind, shape = ("linear", tuple(w.shape)) if conv is None else ("conv2d", conv[1])
        gv = self._add_kernel(bb, func, kernel, layer, kind, shape,
                              tuple(bsr.block), bsr, bias, act, precision="int8")
        if conv is None:
            return relax.call_tir(gv, [*operands, *(relax.const(a) for a in args)],
                                  relax.TensorType(out_shape, "float32"))
        n, cout, oh, ow = (int(d) for d in out_shape)  # the kernel writes (N, Cout, OH*OW)
        y = bb.emit(relax.call_tir(gv, [*operands, *(relax.const(a) for a in args)],
                                   relax.TensorType((n, cout, oh * ow), "float32")))
        return relax.op.reshape(y, (n, cout, oh, ow))

    @staticmethod
    def _quantized_types(rows_shape: tuple[int, ...], kq: int, dot: Any) -> list[Any]:
        """The types of a quantizing call's outputs (values, scales, zero points)."""
        from ..kernels.int8 import flat_rows

        rows = flat_rows(rows_shape)
        return [relax.TensorType((rows, kq), dot.act_dtype),
                relax.TensorType((rows,), "float32"), relax.TensorType((rows,), "int32")]

    @staticmethod
    def _tuple(bb, call: Any) -> list[Any]:
        """The three outputs of a quantizing call (values, scales, zero points)."""
        out = bb.emit(call)
        return [relax.TupleGetItem(out, i) for i in range(3)]

    def _function(self, bb, key: tuple, prefix: str, make: Any) -> Any:
        """One module function per distinct ``key`` (built by ``make`` the first time): layers
        reading the same tensor (Q, K, V) share it, and their identical calls are computed
        once (common subexpressions)."""
        gv = self._shared.get(key)
        if gv is None:
            name = f"{prefix}_{len(self._shared)}"
            gv = bb.add_func(make().with_attr("global_symbol", name), name)
            self._shared[key] = gv
        return gv

    def _quantized_rows(self, bb, x, x_shape: tuple[int, ...], kq: int, static: Any,
                        dot: Any) -> list[Any]:
        """``x`` quantized per row (:func:`..kernels.int8.quantize_rows`)."""
        from ..kernels import int8 as K8

        def make() -> Any:
            if not dot.gpu:
                return K8.quantize_rows(x_shape, kq, dot, static=static, threads=self.threads)
            from ..kernels.int8_cuda import quantize_rows_cuda

            return quantize_rows_cuda(x_shape, kq, static=static)

        quant = self._function(bb, ("rows", x_shape, kq, static, dot.name), "quantize_rows",
                               make)
        return self._tuple(bb, relax.call_tir(quant, [x],
                                              self._quantized_types(x_shape, kq, dot)))

    def _half(self, bsr: BSRMatrix, x_shape: list) -> bool:
        """Whether this linear layer runs the half kernel (no padding blocks, static rows)."""
        n, k = bsr.shape
        bn, bk = bsr.block
        static = all(isinstance(d, int) for d in x_shape)
        return self.dtype != "float32" and static and n % bn == 0 and k % bk == 0

    def _half_conv(self, x_shape: list) -> bool:
        """Whether this conv layer runs the half kernel (a static batch)."""
        return self.dtype != "float32" and all(isinstance(d, int) for d in x_shape)

    def _lower_half(
        self, bb, layer, x, out_shape, bsr, bias, act, block, kind, shape, func
    ) -> Any:
        """Call the half kernel ``func`` between casts of ``x`` and ``y``."""
        from ..kernels.half import half_weight_args

        kernel = f"{func.attrs[K.KERNEL_ATTR]}_{self.dtype}"
        gv = self._add_kernel(bb, func, kernel, layer, kind, shape, block, bsr, bias, act,
                              precision=self.dtype)
        consts = half_weight_args(bsr, None if bias is None else bias.reshape(-1), dtype=self.dtype)
        xh = bb.emit(relax.op.astype(x, self.dtype))
        y = bb.emit(
            relax.call_tir(
                gv, [xh, *(_const(c) for c in consts)], relax.TensorType(out_shape, self.dtype)
            )
        )
        return relax.op.astype(y, "float32")

    def _add_kernel(self, bb, func, kernel, layer, kind, shape, block, bsr, bias, act,
                    precision: str = "float32") -> Any:
        """Add ``func`` to the module under a name from the kernel and layer; record the layer."""
        safe = layer.replace(".", "_")
        symbol = f"{kernel}_{safe}"
        if symbol in self._symbols:  # a layer computed twice (a module called twice)
            symbol = f"{symbol}_{sum(s.startswith(symbol) for s in self._symbols)}"
        self._symbols.add(symbol)
        gv = bb.add_func(func.with_attr("global_symbol", symbol), symbol)
        total = bsr.num_block_rows * bsr.num_block_cols
        self.layers.append(
            LoweredLayer(
                layer, kind, shape, block, int(bsr.nnzb), int(total), kernel,
                "+".join(p for p in ("bias" if bias is not None else "", act or "") if p),
                precision,
            )
        )
        return gv


def lowered_layers(mod: tvm.IRModule) -> list[LoweredLayer]:
    """What LowerBlockSparse recorded in ``mod`` (its ``tetris.lowered_layers`` attribute),
    also after later passes; empty when it lowered nothing."""
    attrs = mod.attrs
    text = None if attrs is None else attrs.get(LOWERED_ATTR)
    if text is None:
        return []
    return [LoweredLayer(**{**d, "shape": tuple(d["shape"]), "block": tuple(d["block"])})
            for d in json.loads(str(text))]


def _const(array: np.ndarray) -> relax.Constant:
    """A Relax constant of a numpy array, bfloat16 (ml_dtypes) included."""
    if array.dtype.name == "bfloat16":
        return relax.const(tvm.runtime.tensor(array), "bfloat16")
    return relax.const(array)


def _keeps_channel(call: relax.Call, src: Any, channel: int, src_ty: Any) -> bool:
    """A reshape of ``src`` (of type ``src_ty``) that only regroups the leading axes."""
    if op_name(call) != "relax.reshape" or not call.args[0].same_as(src):
        return False
    before = shape_dims(src_ty.shape)
    if channel != len(before) - 1:
        return False
    after = call.ty.shape if hasattr(call, "ty") and call.ty is not None else None
    if after is None:
        return False
    return same_dims(shape_dims(after)[-1:], before[-1:])


def _activation_of(call: Any) -> str | None:
    """The fused-epilogue name of an activation call (``clip(x, 0, 6)`` is ``relu6``)."""
    name = op_name(call)
    if name in _ACTIVATIONS:
        return _ACTIVATIONS[name]
    if name == "relax.clip" and len(call.args) == 3:
        bounds = []
        for a in call.args[1:]:
            v = getattr(a, "value", None)  # a PrimValue holds an IntImm / FloatImm
            v = getattr(v, "value", v)
            bounds.append(float(v) if isinstance(v, (int, float)) else None)
        if bounds == [0.0, 6.0]:
            return "relu6"
    return None


def _bias_of(
    call: relax.Call,
    src: Any,
    channel: int,
    ndim: int,
    channels: int,
    folded: Mapping[Any, np.ndarray],
) -> np.ndarray | None:
    """The per-channel constant ``c`` of ``add(src, c)`` / ``add(c, src)``, flattened."""
    if op_name(call) != "relax.add" or len(call.args) != 2:
        return None
    other = call.args[1] if call.args[0].same_as(src) else call.args[0]
    if other.same_as(src):
        return None
    if is_const(other):
        value = const_value(other)
    elif other in folded:
        value = folded[other]
    else:
        return None
    if value.size != channels or value.ndim > ndim:
        return None
    full = (1,) * (ndim - value.ndim) + tuple(value.shape)
    if full[channel] != channels:
        return None
    return value.reshape(-1).astype(np.float32)


def _without(mod: tvm.IRModule, gv: Any) -> tvm.IRModule:
    funcs = {g: f for g, f in mod.functions.items() if not g.same_as(gv)}
    return tvm.IRModule(funcs, attrs=mod.attrs)
