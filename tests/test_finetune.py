"""Gradual TETRIS pruning with distillation: schedule, masks, checkpoints, errors, DDP."""

import copy
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn as nn

import tetris_tvm
from tetris_tvm.finetuning import FinetuneInterrupted, sparsity_at
from tetris_tvm.reorder import count_pruned_blocks


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 48)
        self.fc2 = nn.Linear(48, 48)
        self.fc3 = nn.Linear(48, 8)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Encoder(nn.Module):
    """(batch, seq) token ids -> (batch, seq, hidden), with an attention-mask keyword."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.up = nn.Linear(32, 64)
        self.down = nn.Linear(64, 32)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        return h + self.down(torch.relu(self.up(h)))


def _data(n=6, batch=16, seed=0, labels=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 32, generator=g)
        out.append((x, torch.randint(0, 8, (batch,), generator=g)) if labels else x)
    return out


@pytest.fixture
def clf():
    torch.manual_seed(0)
    return Classifier()


def _run(model, steps=24, **kw):
    data = kw.pop("data", None)
    args = dict(steps=steps, prune_every=4, ramp=0.5, lr=1e-3, progress=False)
    args.update(kw)
    return tetris_tvm.finetune(model, _data() if data is None else data, 0.75, (8, 8), **args)


def test_schedule_is_cubic_and_ends_exactly_at_the_target():
    s = [sparsity_at(t, 100, 0.8, 0.0, 0.6, 10) for t in range(100)]
    assert s[0] == 0.0 and s[-1] == pytest.approx(0.8) and s[60] == pytest.approx(0.8)
    assert all(a <= b + 1e-12 for a, b in zip(s, s[1:], strict=False))
    assert s[10] > 0.8 * (1 - (1 - 10 / 60)) - 1e-9  # cubic: fast first, slow at the end
    assert len(set(s[:60])) == 6  # updated every 10 steps
    assert sparsity_at(5, 100, 0.8, schedule="oneshot") == 0.8
    with pytest.raises(ValueError, match="schedule"):
        sparsity_at(0, 10, 0.5, schedule="exp")


def test_masks_hold_after_every_step_and_sparsity_follows_the_schedule(clf):
    seen = []

    def check(step, model, plan):
        params = dict(model.named_parameters())
        for name, lp in plan.items():
            assert torch.all(params[name].detach()[torch.as_tensor(~lp.mask)] == 0), (step, name)
            expect = sparsity_at(step - 1, 24, 0.75, 0.0, 0.5, 4)
            assert lp.n_blocks - lp.kept_blocks == count_pruned_blocks(lp.n_blocks, expect)
        seen.append(step)

    model, plan = _run(clf, on_step=check, weight_decay=0.5)
    assert seen == list(range(1, 25))
    assert plan.settings["finetune"]["permutations"] == "fixed"
    for lp in plan.values():
        assert lp.n_blocks - lp.kept_blocks == count_pruned_blocks(lp.n_blocks, 0.75)
    assert plan.settings["finetune"]["steps"] == 24
    assert "fc1.weight" in plan.params and "fc1.bias" in plan.params


def test_fixed_permutations_keep_the_storage_order_while_masks_move(clf):
    perms, masks = [], []

    def record(step, model, plan):
        perms.append({n: [p.copy() for p in lp.perms] for n, lp in plan.items()})
        masks.append({n: lp.mask.copy() for n, lp in plan.items()})

    _run(clf, steps=30, on_step=record)
    for p in perms[1:]:
        for n in p:
            for a, b in zip(p[n], perms[0][n], strict=True):
                np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(masks[5][n], masks[-1][n]) for n in masks[0])
    with pytest.raises(ValueError, match="permutations must be"):
        _run(clf, permutations="sometimes")


def test_distillation_moves_the_student_toward_the_teacher(clf):
    data = _data(n=40, labels=False)
    with torch.no_grad():
        clf.fc3.weight.mul_(8.0)  # a confident teacher
    teacher = copy.deepcopy(clf)
    one_shot = tetris_tvm.prune(clf, 0.75, (8, 8))
    base = one_shot.apply(copy.deepcopy(clf), keep=False)
    model, plan = _run(copy.deepcopy(clf), steps=200, data=data, task_weight=0.0, lr=3e-3,
                       prune_every=10)
    x = torch.randn(256, 32)
    with torch.no_grad():
        kl = lambda m: torch.nn.functional.kl_div(  # noqa: E731
            m(x).log_softmax(-1), teacher(x).log_softmax(-1), reduction="batchmean",
            log_target=True)
        assert kl(model) < 0.7 * kl(base)


def test_encoder_outputs_use_the_hidden_state_loss():
    torch.manual_seed(0)
    enc = Encoder()
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(4):
        ids = torch.randint(1, 50, (8, 6), generator=g)
        mask = torch.ones(8, 6, dtype=torch.long)
        mask[:, 4:] = 0
        data.append({"input_ids": ids, "attention_mask": mask})
    model, plan = tetris_tvm.finetune(enc, data, 0.5, (8, 8), steps=12, prune_every=3,
                                      lr=1e-3, progress=False)
    assert set(plan) == {"up.weight", "down.weight"}
    assert np.isfinite(plan.settings["finetune"]["final_loss"])


class Stack(nn.Module):
    """Three blocks in a ModuleList, like a transformer's layers."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(32, 32) for _ in range(3))
        self.head = nn.Linear(32, 8)

    def forward(self, x):
        for b in self.blocks:
            x = torch.relu(b(x))
        return self.head(x)


def test_hidden_layer_modules_auto_and_by_pattern():
    from tetris_tvm.finetuning import hidden_modules

    m = Stack()
    assert hidden_modules(m, None) == []
    assert hidden_modules(m, "auto") == ["blocks.0", "blocks.1", "blocks.2"]
    assert hidden_modules(m, ["blocks.?", "head"]) == ["blocks.0", "blocks.1", "blocks.2", "head"]
    with pytest.raises(ValueError, match="matches no module"):
        hidden_modules(m, "encoder.*")
    with pytest.raises(ValueError, match="needs a model with an nn.ModuleList"):
        hidden_modules(Classifier(), "auto")


def test_hidden_layer_distillation_adds_the_intermediate_error():
    """The loss with taps = output loss + weight * mean normalised MSE of the blocks' outputs,
    and training with them leaves no hook behind."""
    from tetris_tvm.calibration import as_batches
    from tetris_tvm.finetuning import FinetuneConfig, _Taps, distillation_loss, hidden_modules

    torch.manual_seed(0)
    teacher = Stack().eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.blocks[1].weight.mul_(0.5)  # only block 1 and what follows differ
    batch = as_batches([torch.randn(16, 32)])[0]
    names = hidden_modules(student, "auto")
    cfg = FinetuneConfig(steps=1, hidden_weight=2.0)
    plain = distillation_loss(student, teacher, batch, None, cfg)
    taps = (_Taps(student, names), _Taps(teacher, names))
    with_taps = distillation_loss(student, teacher, batch, None, cfg, taps)
    with torch.no_grad():
        outs_s, outs_t, xs, xt = [], [], batch.args[0], batch.args[0]
        for bs, bt in zip(student.blocks, teacher.blocks, strict=True):
            ys, yt = bs(xs), bt(xt)  # a block's own output (the ReLU is outside it)
            outs_s.append(ys)
            outs_t.append(yt)
            xs, xt = torch.relu(ys), torch.relu(yt)
        terms = [((a - b) ** 2).mean() / (b**2).mean() for a, b in zip(outs_s, outs_t, strict=True)]
        expected = plain + 2.0 * torch.stack(terms).mean()
    assert float(terms[0]) == 0.0 and float(terms[1]) > 0
    torch.testing.assert_close(with_taps.detach(), expected, rtol=1e-5, atol=1e-6)
    for t in taps:
        t.close()
    model, plan = tetris_tvm.finetune(Stack(), _data(labels=False), 0.5, (8, 8), steps=8,
                                      prune_every=2, lr=1e-3, progress=False,
                                      hidden_layers="auto")
    assert plan.settings["finetune"]["hidden_layers"] == ["blocks.0", "blocks.1", "blocks.2"]
    assert all(not m._forward_hooks for m in model.modules())


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(clf, tmp_path):
    full, _ = _run(copy.deepcopy(clf), checkpoint_dir=tmp_path / "a", checkpoint_every=5)

    class Crash(Exception):
        pass

    def crash(step, model, plan):
        if step == 13:
            raise Crash

    with pytest.raises(Crash):
        _run(copy.deepcopy(clf), checkpoint_dir=tmp_path / "b", checkpoint_every=5,
             on_step=crash)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 10
    resumed, _ = _run(copy.deepcopy(clf), checkpoint_dir=tmp_path / "b", checkpoint_every=5,
                      resume=True)
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=n)


def test_ctrl_c_stops_after_the_step_and_keeps_a_checkpoint(clf, tmp_path):
    def interrupt(step, model, plan):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(FinetuneInterrupted) as info:
        _run(clf, checkpoint_dir=tmp_path, checkpoint_every=100, on_step=interrupt)
    assert info.value.step in (5, 6)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == info.value.step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_bad_data_and_nan_loss_stop_with_clear_errors(clf, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        _run(clf, data=[])
    with pytest.raises(ValueError, match="could not run"):
        _run(clf, data=[torch.randn(4, 31)])
    with pytest.raises(ValueError, match="steps must be"):
        _run(clf, steps=0)

    def poison(step, model, plan):
        if step == 4:
            with torch.no_grad():
                model.fc3.bias.fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="loss became nan"):
        _run(clf, checkpoint_dir=tmp_path, checkpoint_every=2, on_step=poison)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_compiled_finetuned_model_equals_its_masked_reference(clf):
    x = torch.randn(3, 32)
    planner = tetris_tvm.graph_planner(clf, (x,), (8, 8))
    model, plan = _run(clf, planner=planner)
    cm = tetris_tvm.compile(model, (x,), plan=plan)
    assert cm.report.totals["runtime_gathers"] == 0
    plan.remove()
    ref = plan.apply(copy.deepcopy(model), keep=False)
    with torch.no_grad():
        expect = ref(x)
    assert float((cm(x) - expect).abs().max() / expect.abs().max()) <= 1e-4


def _ddp_worker(rank, world, init, out, state):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    model = Classifier()
    model.load_state_dict(state)
    try:
        model, plan = _run(model, steps=12, data=_data(labels=True))
        if rank == 0:
            torch.save({"model": model.state_dict(),
                        "masks": {n: lp.mask for n, lp in plan.items()}}, out)
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_matches_one_process(clf, tmp_path):
    import torch.multiprocessing as mp

    state = copy.deepcopy(clf.state_dict())
    single, plan = _run(copy.deepcopy(clf), steps=12, data=_data(labels=True))
    out = tmp_path / "ddp.pt"
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_worker, args=(2, init, str(out), state), nprocs=2, join=True)
    got = torch.load(out, weights_only=False)
    for n, lp in plan.items():
        np.testing.assert_array_equal(got["masks"][n], lp.mask)
    for n, v in single.state_dict().items():
        torch.testing.assert_close(got["model"][n], v, rtol=1e-4, atol=1e-5, msg=n)


def test_a_spec_and_the_keywords_fine_tune_alike(clf):
    twin = copy.deepcopy(clf)
    spec = tetris_tvm.PruningSpec(sparsity=0.75, block_size=(8, 8), importance="magnitude")
    _, by_spec = tetris_tvm.finetune(clf, _data(), spec=spec, steps=8, prune_every=4, ramp=0.5,
                                     lr=1e-3, progress=False)
    _, by_keywords = tetris_tvm.finetune(twin, _data(), 0.75, (8, 8), importance="magnitude",
                                         steps=8, prune_every=4, ramp=0.5, lr=1e-3,
                                         progress=False)
    for name in by_spec:
        np.testing.assert_array_equal(by_spec[name].mask, by_keywords[name].mask)
    with pytest.raises(ValueError, match="finetune: give the target sparsity"):
        tetris_tvm.finetune(twin, _data(), steps=4, progress=False)
