"""The attribute keys tetris-tvm writes on TensorIR kernels and Relax modules, in one place.

Kernels (:mod:`tetris_tvm.kernels`) carry their geometry so that schedule rules can read it
without pattern-matching loops; the passes record what they did on the module and on the
composite functions they create. Every reader and writer names a key through :class:`Attr`.
"""

from __future__ import annotations

__all__ = ["Attr", "kernel_attrs"]


class Attr:
    """Attribute keys (all strings in the ``tetris.`` namespace)."""

    # on kernels (PrimFuncs built by tetris_tvm.kernels)
    KERNEL = "tetris.kernel"  # kernel kind: "bsr_linear", "dense_conv2d", ...
    BLOCK = "tetris.block"  # [rows, cols] of a stored block (also on composite functions)
    ROWS = "tetris.rows"  # GEMM rows (tokens x batch, or pixels of one work item)
    ROW_CHUNK = "tetris.row_chunk"  # rows per parallel work item, when chunked
    OUT_FEATURES = "tetris.out_features"  # output features / channels
    ACTIVATION = "tetris.activation"  # fused epilogue activation ("none" if none)
    CONV_MODE = "tetris.conv_mode"  # "implicit", "im2col" or "direct"
    PIXEL_CHUNKS = "tetris.pixel_chunks"  # work items per image of a conv
    DTYPE = "tetris.dtype"  # operand dtype of a half-precision kernel
    DOT = "tetris.dot"  # int8 dot-product instruction of an int8 kernel
    PREFETCH_OPERAND = "tetris.prefetch_operand"  # set by the CPU prefetch rule

    # on Relax functions and modules (set by tetris_tvm.passes)
    LAYER = "tetris.layer"  # state_dict name of a pruned layer's weight (composites)
    BALANCED = "tetris.balanced"  # the layer's blocks are balanced per block-row
    LINEAR_COMPOSITE = "tetris.linear"  # Composite name of a pruned linear's function
    CONV2D_COMPOSITE = "tetris.conv2d"  # Composite name of a pruned conv's function
    PRUNED_LAYERS = "tetris.pruned_layers"  # module: layers TetrisPrune pruned
    LOWERED_LAYERS = "tetris.lowered_layers"  # module: layers LowerBlockSparse lowered
    RUNTIME_GATHERS = "tetris.runtime_gathers"  # module: gathers FoldPermutations kept


def kernel_attrs(kind: str, block: tuple[int, int] | list[int], rows: int, out_features: int,
                 activation: str | None = None, **extra: object) -> dict[str, object]:
    """The attributes every tetris GEMM kernel carries (``extra``: more, keyed by
    :class:`Attr` values)."""
    return {
        Attr.KERNEL: kind,
        Attr.BLOCK: [int(block[0]), int(block[1])],
        Attr.ROWS: rows,
        Attr.OUT_FEATURES: out_features,
        Attr.ACTIVATION: activation or "none",
        **extra,
    }
