"""Block-sparse row (BSR) weights: the storage the block-sparse kernels read.

A weight ``W`` of logical shape ``(N, K)`` (``N`` outputs, ``K`` inputs; a conv weight
``(Cout, Cin, kh, kw)`` is viewed as ``(Cout, Cin * kh * kw)``) is cut into ``(bn, bk)`` blocks.
``N`` and ``K`` need not be multiples of the block: the last block-row / block-column is
zero-padded. Public arrays (scipy's BSR convention):

- ``data``    float32 ``(nnzb, bn, bk)``: the kept blocks, row-major inside a block;
- ``indices`` int32 ``(nnzb,)``: block-column of each kept block;
- ``indptr``  int32 ``(NB + 1,)``: kept blocks of block-row ``r`` are ``indptr[r]:indptr[r+1]``.

The kernels read the blocks transposed (:meth:`BSRMatrix.packed_data`, ``(nnzb, bk, bn)``) so
that the output axis is contiguous and can be vectorised.  When every block-row keeps the same
number of blocks the matrix is *balanced* and also has a static "blocked-ELL" form
(:meth:`BSRMatrix.to_ell`) whose loop extents do not depend on ``indptr``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BSRMatrix"]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, eq=False)
class BSRMatrix:
    """A 2-D float32 matrix stored as block-sparse rows (see the module docstring)."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]
    block: tuple[int, int]

    def __post_init__(self) -> None:
        bn, bk = self.block
        n, k = self.shape
        if bn <= 0 or bk <= 0 or n <= 0 or k <= 0:
            raise ValueError(f"bad shape {self.shape} / block {self.block}")
        if self.data.ndim != 3 or self.data.shape[1:] != (bn, bk):
            raise ValueError(f"data must be (nnzb, {bn}, {bk}), got {self.data.shape}")
        if self.indices.shape != (self.data.shape[0],):
            raise ValueError("indices must have one entry per stored block")
        if self.indptr.shape != (self.num_block_rows + 1,):
            raise ValueError(f"indptr must have {self.num_block_rows + 1} entries")
        if self.indptr[0] != 0 or self.indptr[-1] != self.nnzb or np.any(np.diff(self.indptr) < 0):
            raise ValueError("indptr must rise from 0 to nnzb")
        if self.nnzb and (self.indices.min() < 0 or self.indices.max() >= self.num_block_cols):
            raise ValueError("block-column index out of range")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(
        cls,
        w: np.ndarray,
        block: tuple[int, int] | int,
        block_mask: np.ndarray | None = None,
    ) -> BSRMatrix:
        """Pack a dense ``(N, K)`` matrix whose pruned blocks are zero.

        ``block_mask`` (``(ceil(N/bn), ceil(K/bk))`` bool) says which blocks are kept; entries of
        ``w`` outside kept blocks are dropped.  By default a block is kept when it holds any
        nonzero.  Rows/columns past ``N``/``K`` are zero padding.
        """
        w = np.asarray(w, dtype=np.float32)
        if w.ndim != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {w.shape}")
        bn, bk = (block, block) if isinstance(block, int) else tuple(int(b) for b in block)
        n, k = w.shape
        nb, kb = _ceil_div(n, bn), _ceil_div(k, bk)
        padded = np.zeros((nb * bn, kb * bk), np.float32)
        padded[:n, :k] = w
        blocks = padded.reshape(nb, bn, kb, bk).transpose(0, 2, 1, 3)  # (NB, KB, bn, bk)
        if block_mask is None:
            mask = np.abs(blocks).max(axis=(2, 3)) > 0
        else:
            mask = np.asarray(block_mask, dtype=bool)
            if mask.shape != (nb, kb):
                raise ValueError(f"block_mask must be {(nb, kb)}, got {mask.shape}")
        rows, cols = np.nonzero(mask)
        indptr = np.zeros(nb + 1, np.int32)
        np.cumsum(mask.sum(axis=1), out=indptr[1:])
        return cls(
            data=np.ascontiguousarray(blocks[rows, cols]),
            indices=cols.astype(np.int32),
            indptr=indptr,
            shape=(int(n), int(k)),
            block=(int(bn), int(bk)),
        )

    # ------------------------------------------------------------------ properties
    @property
    def nnzb(self) -> int:
        """Number of stored blocks."""
        return int(self.data.shape[0])

    @property
    def num_block_rows(self) -> int:
        """``ceil(N / bn)``."""
        return _ceil_div(self.shape[0], self.block[0])

    @property
    def num_block_cols(self) -> int:
        """``ceil(K / bk)``."""
        return _ceil_div(self.shape[1], self.block[1])

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Shape rounded up to whole blocks."""
        return self.num_block_rows * self.block[0], self.num_block_cols * self.block[1]

    @property
    def density(self) -> float:
        """Fraction of blocks kept (``1 - block sparsity``)."""
        return self.nnzb / float(self.num_block_rows * self.num_block_cols)

    @property
    def row_counts(self) -> np.ndarray:
        """Kept blocks per block-row."""
        return np.diff(self.indptr)

    @property
    def is_balanced(self) -> bool:
        """True when every block-row keeps the same number of blocks (blocked-ELL applies)."""
        counts = self.row_counts
        return bool(np.all(counts == counts[0]))

    @property
    def block_mask(self) -> np.ndarray:
        """Bool ``(NB, KB)`` mask of kept blocks."""
        mask = np.zeros((self.num_block_rows, self.num_block_cols), bool)
        mask[np.repeat(np.arange(self.num_block_rows), self.row_counts), self.indices] = True
        return mask

    # ------------------------------------------------------------------ conversions
    def to_dense(self) -> np.ndarray:
        """The logical ``(N, K)`` float32 matrix (zeros outside kept blocks)."""
        bn, bk = self.block
        nb, kb = self.num_block_rows, self.num_block_cols
        blocks = np.zeros((nb, kb, bn, bk), np.float32)
        rows = np.repeat(np.arange(nb), self.row_counts)
        blocks[rows, self.indices] = self.data
        dense = blocks.transpose(0, 2, 1, 3).reshape(nb * bn, kb * bk)
        return np.ascontiguousarray(dense[: self.shape[0], : self.shape[1]])

    def packed_data(self) -> np.ndarray:
        """Kernel layout of the blocks: ``(nnzb, bk, bn)`` (each block transposed)."""
        return np.ascontiguousarray(self.data.transpose(0, 2, 1))

    @property
    def ell_width(self) -> int:
        """Blocks per block-row of a balanced matrix (raises when not balanced)."""
        if not self.is_balanced:
            raise ValueError("matrix is not balanced: block-rows keep different block counts")
        return int(self.row_counts[0])

    def to_ell(self) -> tuple[np.ndarray, np.ndarray]:
        """Blocked-ELL form of a balanced matrix.

        Returns ``(data, indices)`` with ``data`` ``(NB, P, bn, bk)`` and ``indices`` ``(NB, P)``
        int32 where ``P`` = :attr:`ell_width`.
        """
        p = self.ell_width
        bn, bk = self.block
        nb = self.num_block_rows
        return (
            self.data.reshape(nb, p, bn, bk).copy(),
            self.indices.reshape(nb, p).copy(),
        )
