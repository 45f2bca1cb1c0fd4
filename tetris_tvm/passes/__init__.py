"""Relax passes of the tetris-tvm pipeline (each a ``tvm.transform.Pass``).

- :func:`plan_graph` -- the PruningPlan whose permutations the graph can fold away.
- :class:`TetrisPrune` -- apply a plan to the weight layers (composites + gathers).
- :class:`FoldPermutations` -- push, compose, cancel and absorb the channel gathers.
- :class:`FoldBatchNorm` -- eval batch norms scale the weight layer before them.
- :class:`LowerBlockSparse` -- composites -> ``call_tir`` to block-sparse TensorIR kernels.
- :class:`LowerAttention` -- ``nn.attention`` -> the fused CPU attention kernel.
- :class:`FastActivations` -- vectorisable GELU / softmax / exp for what stays outside.
- :class:`ClipGatherIndices` -- gathers clip their indices (no segfault on a bad token id).
"""

from .attention import LowerAttention
from .checked_gathers import ClipGatherIndices
from .fast_math import FastActivations
from .fold_batch_norm import FoldBatchNorm
from .fold_permutations import FoldPermutations
from .layer_sites import LayerSite
from .lower import LowerBlockSparse, LoweredLayer
from .planning import plan_graph
from .prune import COMPOSITE_CONV2D, COMPOSITE_LINEAR, TetrisPrune, pruned_layers

__all__ = [
    "COMPOSITE_CONV2D",
    "COMPOSITE_LINEAR",
    "ClipGatherIndices",
    "FastActivations",
    "FoldBatchNorm",
    "FoldPermutations",
    "LayerSite",
    "LoweredLayer",
    "LowerAttention",
    "LowerBlockSparse",
    "TetrisPrune",
    "plan_graph",
    "pruned_layers",
]
