"""The dense peers (ONNX Runtime, OpenVINO) compute what torch computes; missing ones are
reported, not errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tetris_tvm import peers


def test_available_names_every_peer():
    found = peers.available()
    assert set(found) == set(peers.PEERS)
    for reason in found.values():
        assert reason is None or "install" in reason


@pytest.mark.parametrize("name", peers.PEERS)
def test_peer_matches_torch(name, tmp_path):
    reason = peers.available()[name]
    if reason is not None:
        pytest.skip(reason)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.GELU(), nn.Linear(32, 5)).eval()
    x = torch.randn(3, 20)
    run = peers.runner(name, model, (x,), threads=1)
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(peers.first_output(run()), want, rtol=1e-5, atol=1e-5)


def test_unknown_peer():
    with pytest.raises(ValueError, match="unknown peer 'tensorrt'"):
        peers.runner("tensorrt", nn.Linear(2, 2), (torch.randn(1, 2),))
