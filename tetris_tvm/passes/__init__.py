"""Relax passes of the tetris-tvm pipeline (each a ``tvm.transform.Pass``).

- :class:`TetrisPrune` -- reorder + block-prune the weight layers (composites + gathers).
- :class:`FoldPermutations` -- push, compose, cancel and absorb the channel gathers.
- :class:`LowerBlockSparse` -- composites -> ``call_tir`` to block-sparse TensorIR kernels.
- :class:`FastActivations` -- vectorisable GELU / softmax / exp for what stays outside.
- :class:`ClipGatherIndices` -- gathers clip their indices (no segfault on a bad token id).
"""

from .checked_gathers import ClipGatherIndices
from .fast_math import FastActivations
from .fold_permutations import FoldPermutations
from .lower import LowerBlockSparse, LoweredLayer
from .prune import COMPOSITE_CONV2D, COMPOSITE_LINEAR, LayerSite, TetrisPrune

__all__ = [
    "COMPOSITE_CONV2D",
    "COMPOSITE_LINEAR",
    "ClipGatherIndices",
    "FastActivations",
    "FoldPermutations",
    "LayerSite",
    "LoweredLayer",
    "LowerBlockSparse",
    "TetrisPrune",
]
