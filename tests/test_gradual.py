"""GradualPruner: gradual TETRIS pruning inside the caller's own training loop (a plain loop and
a Hugging Face Trainer); the result compiles to its masked reference."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import tetris_tvm
from tetris_tvm import GradualPruner, PruningSpec


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 16)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _data(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 32, generator=g) for _ in range(n)]


def test_a_plain_loop_ramps_to_the_target_and_compiles_to_its_reference():
    torch.manual_seed(0)
    model, teacher = MLP(), MLP()
    teacher.load_state_dict(model.state_dict())
    data = _data()
    steps = 12
    spec = PruningSpec(sparsity=0.5, block_size=8)
    pruner = GradualPruner(model, spec, steps=steps, prune_every=2, ramp=0.5,
                           calibration=data[:2])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen = []
    for step in range(steps):
        x = data[step % len(data)]
        loss = ((model(x) - teacher(x).detach()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruner.step(opt)
        seen.append(pruner.sparsity)
        for name, lp in pruner.plan.items():  # pruned weights are exactly zero every step
            w = dict(model.named_parameters())[name].detach().numpy()
            assert not np.any(w[~lp.mask])
    assert seen == sorted(seen) and seen[0] < 0.5 and seen[-1] == pytest.approx(0.5)
    plan = pruner.finish(opt)
    assert all(lp.kept_blocks == lp.n_blocks // 2 for lp in plan.values())
    x = torch.randn(4, 32)
    cm = tetris_tvm.compile(model, (x,), plan=plan, progress=False)
    reference = copy.deepcopy(model)
    plan.apply(reference)
    with torch.no_grad():
        want = reference(x).numpy()
    np.testing.assert_allclose(cm(x).numpy(), want, rtol=1e-4, atol=1e-5)


def test_state_dict_resumes_the_schedule():
    torch.manual_seed(1)
    model = MLP()
    pruner = GradualPruner(model, steps=10, prune_every=1, sparsity=0.5, block_size=8)
    for _ in range(4):
        pruner.step()
    state = pruner.state_dict()
    other_model = copy.deepcopy(model)
    other = GradualPruner(other_model, steps=10, prune_every=1, sparsity=0.5, block_size=8)
    other.load_state_dict(state)
    assert other.steps_done == 4 and other.sparsity == pruner.sparsity
    for name in pruner.plan:
        np.testing.assert_array_equal(other.plan[name].mask, pruner.plan[name].mask)
    assert pruner.step() == other.step()


def test_bad_settings_are_refused_in_our_words():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        GradualPruner(MLP(), steps=0)
    with pytest.raises(ValueError, match="needs calibration batches"):
        GradualPruner(MLP(), steps=4, importance="activation")
    with pytest.raises(ValueError, match="GradualPruner: unknown option 'sparsty'"):
        GradualPruner(MLP(), steps=4, sparsty=0.5)
    with pytest.raises(ValueError, match="permutations must be"):
        GradualPruner(MLP(), steps=4, permutations="sometimes")


def test_hugging_face_trainer_callback(tmp_path):
    pytest.importorskip("accelerate")
    transformers = pytest.importorskip("transformers")

    class Regression(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x, y):
            return {"loss": ((self.net(x) - y) ** 2).mean()}

    class Pairs(torch.utils.data.Dataset):
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(64, 32, generator=g)
            self.y = torch.randn(64, 16, generator=g)

        def __len__(self) -> int:
            return 64

        def __getitem__(self, i):
            return {"x": self.x[i], "y": self.y[i]}

    torch.manual_seed(2)
    net = MLP()
    pruner = GradualPruner(net, steps=6, prune_every=1, sparsity=0.75, block_size=8)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8, save_strategy="no",
        report_to=[], use_cpu=True, disable_tqdm=True, logging_strategy="no")
    trainer = transformers.Trainer(model=Regression(net), args=args, train_dataset=Pairs(),
                                   callbacks=[pruner.trainer_callback()])
    trainer.train()
    plan = pruner.plan
    assert pruner.steps_done == 6 and pruner.sparsity == pytest.approx(0.75)
    assert plan.params  # the final plan carries the trained weights
    for name, lp in plan.items():
        assert lp.kept_blocks == lp.n_blocks // 4
        w = dict(net.named_parameters())[name].detach().numpy()
        assert not np.any(w[~lp.mask])
        np.testing.assert_array_equal(plan.params[name], w)
