import numpy as np
import pytest
import torch
import torch.nn as nn

import tetris_tvm
from tetris_tvm import PruningPlan


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 40)
        self.fc2 = nn.Linear(40, 10)

    def forward(self, x):
        x = self.dw(torch.relu(self.conv(x))).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(self.norm(x))))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()


def test_plan_covers_eligible_layers(net):
    plan = tetris_tvm.prune(net, sparsity=0.5, block_size=(8, 8))
    assert set(plan) == {"conv.weight", "fc1.weight", "fc2.weight"}
    skipped = {s.name: s.reason for s in plan.skipped}
    assert "groups=16" in skipped["dw"]
    assert "not a Linear or Conv2d" in skipped["norm"]
    # blocks larger than an axis are clamped for that layer (conv has 3 input channels)
    assert plan["conv.weight"].block_size == (8, 3, 3, 3)
    assert plan["fc2.weight"].mask.shape == (10, 40)
    assert "fc1.weight" in plan.format_table()


def test_overrides_by_pattern(net):
    plan = tetris_tvm.prune(
        net,
        sparsity=0.5,
        block_size=8,
        overrides={"fc*": {"sparsity": 0.75}, "fc2.*": {"skip": True}, "conv.*": {"block_size": 4}},
    )
    assert "fc2.weight" not in plan
    assert plan["fc1.weight"].sparsity == 0.75
    assert plan["conv.weight"].block_size[:2] == (4, 3)
    with pytest.raises(ValueError, match="unknown override keys"):
        tetris_tvm.prune(net, overrides={"fc1.*": {"sparsty": 0.5}})


def test_bad_sparsity_names_layer(net):
    with pytest.raises(ValueError, match="fc1.weight.*sparsity"):
        tetris_tvm.prune(net, sparsity=0.5, overrides={"fc1.*": {"sparsity": 1.5}})


def test_apply_masks_and_keeps_zeros_while_finetuning(net):
    plan = tetris_tvm.prune(net, sparsity=0.5, block_size=8)
    plan.apply(net)
    masks = plan.masks()
    params = dict(net.named_parameters())
    for name, m in masks.items():
        assert (params[name][m == 0] == 0).all()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    x = torch.randn(8, 3, 8, 8)
    for _ in range(20):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
        net(x)  # the forward pre-hook re-masks
    for name, m in masks.items():
        assert (params[name][m == 0] == 0).all(), name
        assert (params[name][m == 1] != 0).any()
    plan.remove()


def test_masked_model_matches_reference(net):
    plan = tetris_tvm.prune(net, sparsity=0.5, block_size=8)
    ref = Net()
    ref.load_state_dict(plan.masked_state_dict(net))
    plan.apply(net, keep=False)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(net(x), ref(x))


def test_save_load_roundtrip(net, tmp_path):
    plan = tetris_tvm.prune(net, sparsity=0.6, block_size=8, balanced=True)
    path = tmp_path / "plan.npz"
    plan.save(path)
    back = PruningPlan.load(path)
    assert list(back) == list(plan)
    for name in plan:
        assert np.array_equal(back[name].mask, plan[name].mask)
        assert back[name].retained_l1 == plan[name].retained_l1
        assert back[name].balanced
    assert [s.name for s in back.skipped] == [s.name for s in plan.skipped]
    assert back.settings["sparsity"] == 0.6


def test_load_onto_mismatched_model_is_clear_error(net, tmp_path):
    plan = tetris_tvm.prune(net, sparsity=0.5, block_size=8)
    other = Net()
    other.fc1 = nn.Linear(16, 48)
    other.fc2 = nn.Linear(48, 10)
    with pytest.raises(ValueError, match=r"fc1.weight: plan was made for shape \(40, 16\)"):
        plan.apply(other)
    with pytest.raises(ValueError, match="not a tetris-tvm pruning plan"):
        bad = tmp_path / "bad.npz"
        bad.write_bytes(b"nope")
        PruningPlan.load(bad)


def test_elementwise_method(net):
    plan = tetris_tvm.prune(net, sparsity=0.5, method="element")
    assert plan["fc1.weight"].method == "element"
    assert plan["fc1.weight"].mask.sum() == 320
