"""BSRMatrix: packing, padding, density, blocked-ELL."""

from __future__ import annotations

import numpy as np
import pytest

from tetris_tvm.kernels import BSRMatrix


def test_round_trip_with_padding():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 45)).astype(np.float32)
    mask = rng.random((3, 3)) < 0.5
    bsr = BSRMatrix.from_dense(w, (16, 16), mask)
    assert bsr.shape == (37, 45) and bsr.padded_shape == (48, 48)
    expected = np.kron(mask, np.ones((16, 16)))[:37, :45] * w
    np.testing.assert_array_equal(bsr.to_dense(), expected.astype(np.float32))
    np.testing.assert_array_equal(bsr.block_mask, mask)
    assert bsr.nnzb == mask.sum()
    assert bsr.density == pytest.approx(mask.mean())


def test_default_mask_keeps_nonzero_blocks():
    w = np.zeros((32, 64), np.float32)
    w[3, 40] = 1.0  # block (0, 2) of 16x16
    w[20, 1] = -2.0  # block (1, 0)
    bsr = BSRMatrix.from_dense(w, 16)
    assert bsr.nnzb == 2
    np.testing.assert_array_equal(bsr.indptr, [0, 1, 2])
    np.testing.assert_array_equal(bsr.indices, [2, 0])
    np.testing.assert_array_equal(bsr.to_dense(), w)


def test_packed_data_is_transposed_blocks():
    rng = np.random.default_rng(1)
    bsr = BSRMatrix.from_dense(rng.standard_normal((16, 64)).astype(np.float32), (16, 32))
    packed = bsr.packed_data()
    assert packed.shape == (bsr.nnzb, 32, 16) and packed.flags.c_contiguous
    np.testing.assert_array_equal(packed[1], bsr.data[1].T)


def test_balanced_and_ell():
    rng = np.random.default_rng(2)
    mask = np.zeros((4, 6), bool)
    for r in range(4):
        mask[r, rng.choice(6, 2, replace=False)] = True
    bsr = BSRMatrix.from_dense(rng.standard_normal((64, 96)).astype(np.float32), 16, mask)
    assert bsr.is_balanced and bsr.ell_width == 2
    data, indices = bsr.to_ell()
    assert data.shape == (4, 2, 16, 16) and indices.shape == (4, 2)
    np.testing.assert_array_equal(indices.reshape(-1), bsr.indices)
    mask[0, :] = False
    unbalanced = BSRMatrix.from_dense(bsr.to_dense(), 16, mask)
    assert not unbalanced.is_balanced
    with pytest.raises(ValueError):
        unbalanced.to_ell()


def test_validation():
    w = np.ones((16, 16), np.float32)
    with pytest.raises(ValueError):
        BSRMatrix.from_dense(w, 8, np.ones((3, 2), bool))
    with pytest.raises(ValueError):
        BSRMatrix.from_dense(w[None], 8)
    good = BSRMatrix.from_dense(w, 8)
    with pytest.raises(ValueError):
        BSRMatrix(good.data, good.indices + 5, good.indptr, good.shape, good.block)
