"""The bi-level engine: DARTS hypergradient against exact second-order autograd, roll-back, batches, resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import TaskType, get_peft_model
from torch import nn
from torch.func import functional_call

from hf_lowdata.budgets import Budget
from hf_lowdata.data import TextDataset, collator, tokenize
from hf_lowdata.models import load_for_classification, load_tokenizer
from hf_lowdata.training import LowDataTrainer, few_shot_training_args
from hf_lowdata.training.bilevel import MixupBLOObjective, _RngState, split_indices
from hf_lowdata.tuners.mixup_blo import Linear, MixupBLOConfig
from tests.helpers import toy_sentences

# ---- a small problem where the exact hypergradient can be computed ---------------------------------


class TinyNet(nn.Module):
    """x -> mixed Linear(5, 4) -> tanh -> Linear(4, 3): non-linear in both the weights and the mixing."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mixed = Linear(nn.Linear(5, 4), "default", MixupBLOConfig(target_modules=["mixed"]))
        self.head = nn.Linear(4, 3)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # a generic point: factors inside (0, 1), W away from W0
            self.mixed.mixup_blo_mix_out["default"].copy_(torch.rand(4, 1, generator=gen) * 0.6 + 0.2)
            self.mixed.mixup_blo_mix_in["default"].copy_(torch.rand(1, 5, generator=gen) * 0.6 + 0.2)
            self.mixed.mixup_blo_weight["default"].add_(torch.randn(4, 5, generator=gen) * 0.5)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mixed(x)))


def _batch(seed: int, n: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 5, generator=gen, dtype=torch.float64), "y": torch.randint(0, 3, (n,), generator=gen)}


class FakeTrainer:
    """The parts of a LowDataTrainer the hypergradient reads."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_grad_norm: float = 0.0) -> None:
        self.optimizer = optimizer
        self.args = SimpleNamespace(max_grad_norm=max_grad_norm, world_size=1, per_device_train_batch_size=4,
                                    process_index=0, fp16=False, gradient_accumulation_steps=1, seed=0)
        self.accelerator = SimpleNamespace(num_processes=1)
        self.state = SimpleNamespace(global_step=0)

    @staticmethod
    def model_loss(net, batch, return_outputs=False, num_items_in_batch=None):
        return nn.functional.cross_entropy(net(batch["x"]), batch["y"])


def _problem(optimizer_factory, warm_steps: int = 0):
    net = TinyNet()
    objective = MixupBLOObjective(darts_radius=1e-4)
    objective._outer = objective.outer_parameters(net)
    inner = [p for p in net.parameters() if all(p is not q for q in objective._outer)]
    optimizer = optimizer_factory(inner)
    for step in range(warm_steps):  # give Adam a non-trivial state
        nn.functional.cross_entropy(net(_batch(100 + step)["x"]), _batch(100 + step)["y"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    trainer = FakeTrainer(optimizer)
    validation = _batch(2)
    objective.validation_batch = lambda trainer: validation
    return net, objective, trainer, inner, validation



class BatchNormNet(TinyNet):
    """TinyNet with a trainable BatchNorm, which stays in training mode and updates its running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.bn(self.mixed(x))))


@pytest.mark.parametrize("hypergradient", ["darts", "first_order"])
def test_the_hypergradient_passes_leave_batchnorm_statistics_as_one_training_step_does(hypergradient):
    """The four extra forward passes of a DARTS step (one on the validation batch) each moved the running
    statistics: five updates per step instead of one, with validation data in them."""
    import copy

    net = BatchNormNet().train()
    reference = copy.deepcopy(net)
    objective = MixupBLOObjective(darts_radius=1e-4, hypergradient=hypergradient)
    objective._outer = objective.outer_parameters(net)
    trainer = FakeTrainer(torch.optim.AdamW([p for p in net.parameters() if all(p is not q for q in objective._outer)],
                                            lr=0.05))
    trainer.accelerator = SimpleNamespace(num_processes=1, unwrap_model=lambda m: m)
    validation = {"x": _batch(2)["x"] * 10 + 5, "y": _batch(2)["y"]}  # other statistics than the training batch
    objective.validation_batch = lambda trainer: validation
    steps = []
    objective._outer_step = lambda trainer, grads: steps.append(grads)
    objective.compute_loss(trainer, net, _batch(1), step_start=True)
    assert len(steps) == 1  # the hypergradient was taken
    reference(_batch(1)["x"])  # the step's own forward pass: the one update the statistics should see
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(net.bn, name), getattr(reference.bn, name), rtol=0, atol=0)


def _exact_hypergradient(net, objective, inner, train, validation, step_fn):
    """d/d alpha of L_val(step(W, grad_W L_train(W, alpha)), alpha), by autograd through the step."""
    names = {id(p): n for n, p in net.named_parameters()}
    alpha = {names[id(p)]: p.detach().clone().requires_grad_() for p in objective._outer}
    weights = {names[id(p)]: p.detach().clone().requires_grad_() for p in inner}

    def loss(params, batch):
        return nn.functional.cross_entropy(functional_call(net, params, (batch["x"],)), batch["y"])

    grads = torch.autograd.grad(loss({**weights, **alpha}, train), list(weights.values()), create_graph=True)
    stepped = step_fn(list(weights.values()), list(grads))
    val = loss({**dict(zip(weights, stepped)), **alpha}, validation)
    return torch.autograd.grad(val, list(alpha.values()))


def test_darts_hypergradient_matches_exact_second_order_autograd_with_sgd():
    lr = 0.3
    net, objective, trainer, inner, validation = _problem(lambda p: torch.optim.SGD(p, lr=lr))
    train = _batch(1)
    ours = objective.darts_hypergradient(trainer, net, train, _RngState())
    exact = _exact_hypergradient(net, objective, inner, train, validation,
                                 lambda ws, gs: [w - lr * g for w, g in zip(ws, gs)])
    first_order = torch.autograd.grad(FakeTrainer.model_loss(net, validation), objective._outer)
    for o, e, f in zip(ours, exact, first_order):
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-9)
        assert not torch.allclose(e, f, rtol=1e-3)  # the implicit (second-order) term is not negligible here


def test_finite_differences_step_exactly_the_darts_radius_away_from_the_weights():
    """eps = R / ||u||: the two perturbed losses are taken at distance R from W (the accuracy check above
    passes at other step sizes too, so the step itself is pinned here)."""
    net, objective, trainer, inner, _ = _problem(lambda p: torch.optim.SGD(p, lr=0.3))
    start = [p.detach().clone() for p in inner]
    distances = []

    def recording_loss(model, batch, **kwargs):
        distances.append(float(torch.linalg.vector_norm(torch.cat([(p - w).flatten() for p, w in zip(inner, start)]))))
        return FakeTrainer.model_loss(model, batch)

    trainer.model_loss = recording_loss
    objective.darts_hypergradient(trainer, net, _batch(1), _RngState())
    assert len(distances) == 4 and distances[0] == 0.0 and distances[1] > 1e-3  # at W, then W' (the virtual step)
    assert distances[2:] == pytest.approx([1e-4, 1e-4], rel=1e-3)  # at W +- eps u
    assert all(torch.equal(p, w) for p, w in zip(inner, start))  # and back


def test_darts_hypergradient_under_gradient_clipping_scales_the_step_by_the_clip_factor():
    """The clip factor c is a constant of the step: W' = W - lr c g, so the implicit term carries c too
    (it was left out, which made the second-order term 1/c times too large whenever clipping was active)."""
    lr, max_norm = 0.3, 0.05
    net, objective, trainer, inner, validation = _problem(lambda p: torch.optim.SGD(p, lr=lr))
    trainer.args.max_grad_norm = max_norm
    train = _batch(1)
    grads = torch.autograd.grad(FakeTrainer.model_loss(net, train), inner + objective._outer)
    clip = float(max_norm / (torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) + 1e-6))
    assert clip < 0.5  # clipping is active in this problem
    ours = objective.darts_hypergradient(trainer, net, train, _RngState())
    exact = _exact_hypergradient(net, objective, inner, train, validation,
                                 lambda ws, gs: [w - lr * clip * g for w, g in zip(ws, gs)])
    for o, e in zip(ours, exact):
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-9)


def test_darts_hypergradient_matches_exact_autograd_through_an_adamw_step():
    lr, betas, eps, decay = 0.05, (0.9, 0.999), 1e-8, 0.01
    net, objective, trainer, inner, validation = _problem(
        lambda p: torch.optim.AdamW(p, lr=lr, betas=betas, eps=eps, weight_decay=decay), warm_steps=3)
    state = {id(p): {k: v.clone() for k, v in trainer.optimizer.state[p].items()} for p in inner}
    train = _batch(1)
    ours = objective.darts_hypergradient(trainer, net, train, _RngState())

    def adamw_step(ws, gs):
        out = []
        for p, w, g in zip(inner, ws, gs):
            st = state[id(p)]
            t = float(st["step"]) + 1
            m = betas[0] * st["exp_avg"] + (1 - betas[0]) * g
            v = betas[1] * st["exp_avg_sq"] + (1 - betas[1]) * g * g
            denom = v.sqrt() / (1 - betas[1] ** t) ** 0.5 + eps
            out.append(w * (1 - lr * decay) - lr / (1 - betas[0] ** t) * m / denom)
        return out

    exact = _exact_hypergradient(net, objective, inner, train, validation, adamw_step)
    for o, e in zip(ours, exact):
        torch.testing.assert_close(o, e, rtol=1e-4, atol=1e-9)


def test_first_order_hypergradient_is_the_validation_gradient():
    net, objective, trainer, inner, validation = _problem(lambda p: torch.optim.SGD(p, lr=0.1))
    objective.hypergradient = "first_order"
    expected = torch.autograd.grad(FakeTrainer.model_loss(net, validation), objective._outer)
    a_before = [p.detach().clone() for p in objective._outer]
    outer_opt = torch.optim.SGD(objective._outer, lr=1.0)
    trainer.auxiliary_optimizers = {"outer": SimpleNamespace(optimizer=outer_opt, scheduler=None)}
    trainer.accelerator.unwrap_model = lambda m: m
    net.train()
    objective.compute_loss(trainer, net, _batch(1), step_start=True)
    for before, after, g in zip(a_before, objective._outer, expected):
        torch.testing.assert_close(after, (before - g).clamp(0, 1), rtol=0, atol=1e-12)


def test_rollback_restores_weights_and_optimizer_state_bit_for_bit():
    net, objective, trainer, inner, _ = _problem(lambda p: torch.optim.AdamW(p, lr=0.05), warm_steps=2)
    weights = [p.detach().clone() for p in net.parameters()]
    state = {id(p): {k: v.clone() for k, v in trainer.optimizer.state[p].items()} for p in inner}
    objective.darts_hypergradient(trainer, net, _batch(1), _RngState())
    for p, w in zip(net.parameters(), weights):
        assert torch.equal(p, w)
    for p in inner:
        current = trainer.optimizer.state[p]
        assert current.keys() == state[id(p)].keys()
        assert all(torch.equal(current[k], state[id(p)][k]) for k in current)


def test_rollback_removes_state_created_by_the_virtual_step():
    net, objective, trainer, inner, _ = _problem(lambda p: torch.optim.AdamW(p, lr=0.05))
    objective.darts_hypergradient(trainer, net, _batch(1), _RngState())
    assert not trainer.optimizer.state  # the first real step still sees a fresh Adam


def test_fp16_is_refused():
    trainer = FakeTrainer(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))
    trainer.args.fp16 = True
    with pytest.raises(ValueError, match="train in bf16 or fp32"):
        MixupBLOObjective().setup(trainer)


# ---- the split and the validation batches ----------------------------------------------------------


def test_split_is_stratified_disjoint_and_deterministic():
    labels = [0] * 10 + [1] * 5
    first, second = split_indices(labels, 15, 0.8, seed=3)
    assert sorted(first + second) == list(range(15)) and not set(first) & set(second)
    assert [labels[i] for i in second].count(0) == 2 and [labels[i] for i in second].count(1) == 1
    assert (first, second) == split_indices(labels, 15, 0.8, seed=3)
    assert (first, second) != split_indices(labels, 15, 0.8, seed=4)
    with pytest.raises(ValueError, match="needs a class with at least 2 examples"):
        split_indices([0], 1, 0.8, seed=0)
    # one example in each of 2 classes: 2 examples, none of them splittable (it read 'Cannot split 2 ... at least 2')
    with pytest.raises(ValueError, match="Cannot split 2 labelled example.* needs a class with at least 2 examples"):
        split_indices([0, 1], 2, 0.8, seed=0)


# ---- in the LowDataTrainer ------------------------------------------------------------------------

BUDGET = Budget(learning_rate=1e-3, epochs=1, min_steps=2, max_steps=2, batch_size=4, warmup_ratio=0.0)


def _data(n: int = 24) -> TextDataset:
    rows = toy_sentences(n, 0)
    return TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")


def _trainer(tiny_bert_dir, out, config=None, dtype=None, **overrides) -> LowDataTrainer:
    tok = load_tokenizer(tiny_bert_dir)
    config = config or MixupBLOConfig(task_type=TaskType.SEQ_CLS, mixing_lr=0.05)
    model = get_peft_model(load_for_classification(tiny_bert_dir, 2, seed=0), config)
    model = model if dtype is None else model.to(dtype)
    args = few_shot_training_args(str(out), BUDGET, 24, seed=0, use_cpu=True, **overrides)
    return LowDataTrainer(model=model, args=args, train_dataset=tokenize(_data(), tok), data_collator=collator(tok),
                          processing_class=tok)


def _mixing(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "_mix_" in n}


def test_trainer_picks_the_bilevel_objective_and_holds_out_a_validation_split(tiny_bert_dir, tmp_path):
    trainer = _trainer(tiny_bert_dir, tmp_path)
    objective = trainer.objective
    assert isinstance(objective, MixupBLOObjective) and objective.hypergradient == "darts"
    assert len(trainer.train_dataset) == 20 and len(objective.validation_dataset) == 4
    train_rows = {tuple(r["input_ids"]) for r in trainer.train_dataset}
    assert not train_rows & {tuple(r["input_ids"]) for r in objective.validation_dataset}
    seen = []
    for step in range(3):  # 4 validation examples, batch 4: every step one full permutation, reshuffled per pass
        trainer.state.global_step = step
        batch = objective.validation_batch(trainer)
        assert batch["input_ids"].shape[0] == 4
        seen.append(batch["input_ids"].tolist())
        trainer.state.global_step = step
        assert objective.validation_batch(trainer)["input_ids"].tolist() == seen[-1]
    assert seen[0] != seen[1] or seen[1] != seen[2]


@pytest.mark.parametrize("hypergradient", ["darts", "first_order", "none"])
def test_training_moves_the_mixing_inside_the_unit_interval_and_only_adapter_parameters(
    hypergradient, tiny_bert_dir, tmp_path
):
    config = MixupBLOConfig(task_type=TaskType.SEQ_CLS, mixing_lr=0.05, hypergradient=hypergradient)
    trainer = _trainer(tiny_bert_dir, tmp_path, config)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert len(trainer.train_dataset) == (24 if hypergradient == "none" else 20)
    after = dict(trainer.model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert any("_mix_" in n for n in changed) and any("mixup_blo_weight" in n for n in changed)
    assert all("base_layer" not in n and "embeddings" not in n for n in changed)
    for value in _mixing(trainer.model).values():
        assert float(value.min()) >= 0.0 and float(value.max()) <= 1.0
    main = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(after[n]) in main for n in after if "_mix_" in n)


def test_resume_equals_uninterrupted_training(tiny_bert_dir, tmp_path):
    full = _trainer(tiny_bert_dir, tmp_path / "full", save_strategy="steps", save_steps=1)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-1"
    assert (checkpoint / "auxiliary_optimizers.pt").is_file()  # the outer optimizer and its schedule
    resumed = _trainer(tiny_bert_dir, tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = dict(full.model.named_parameters()), dict(resumed.model.named_parameters())
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    outer_a = full.auxiliary_optimizers["outer"].optimizer.state_dict()
    outer_b = resumed.auxiliary_optimizers["outer"].optimizer.state_dict()
    assert outer_a["state"][0]["step"] == outer_b["state"][0]["step"] == 2
    assert torch.equal(outer_a["state"][0]["exp_avg_sq"], outer_b["state"][0]["exp_avg_sq"])


def test_resume_with_gradient_accumulation_and_a_short_last_step_per_epoch(tiny_bert_dir, tmp_path):
    # 20 inner examples in batches of 4: 5 micro-batches per epoch, 2 per optimizer step, so every epoch
    # ends with a 1-micro-batch step. Counting micro-batches drifted there: the next step's outer (DARTS)
    # step ran on its second micro-batch, dropping the first one's gradient, and a resumed run differed.
    common = dict(gradient_accumulation_steps=2, max_steps=4, label_smoothing_factor=0.1)
    full = _trainer(tiny_bert_dir, tmp_path / "full", save_strategy="steps", save_steps=3, **common)
    full.train()  # label smoothing: Trainer pops the labels, the hypergradient passes reuse the batch
    resumed = _trainer(tiny_bert_dir, tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    a, b = dict(full.model.named_parameters()), dict(resumed.model.named_parameters())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    for trainer in (full, resumed):  # one outer step per optimizer step, the short ones included
        assert trainer.auxiliary_optimizers["outer"].optimizer.state_dict()["state"][0]["step"] == 4


# ---- under DDP ---------------------------------------------------------------------------------

DDP_WORKER = """
import os
import sys
from accelerate import PartialState
from peft import TaskType, get_peft_model
from hf_lowdata.budgets import Budget
from hf_lowdata.data import TextDataset, collator, tokenize
from hf_lowdata.models import load_for_classification, load_tokenizer
from hf_lowdata.training import LowDataTrainer, few_shot_training_args
from hf_lowdata.tuners.mixup_blo import MixupBLOConfig
from tests.helpers import toy_sentences

path, out = sys.argv[1], sys.argv[2]
tok = load_tokenizer(path)
rows = toy_sentences(24, 0)
data = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"))
model = get_peft_model(load_for_classification(path, 2, seed=0), MixupBLOConfig(task_type=TaskType.SEQ_CLS, mixing_lr=0.05))
budget = Budget(learning_rate=1e-3, epochs=1, min_steps=2, max_steps=2, batch_size=2, warmup_ratio=0.0)
args = few_shot_training_args(out, budget, 24, seed=0, use_cpu=True)
trainer = LowDataTrainer(model=model, args=args, train_dataset=tokenize(data, tok), data_collator=collator(tok),
                         processing_class=tok)
start = sum(float(p.sum()) for n, p in trainer.model.named_parameters() if "_mix_" in n)
trainer.train()
mix = sum(float(p.sum()) for n, p in trainer.model.named_parameters() if "_mix_" in n)
weight = sum(float(p.sum()) for n, p in trainer.model.named_parameters() if "mixup_blo_weight" in n)
print(f"rank {PartialState().process_index} mix={mix:.10f} weight={weight:.10f} steps={trainer.state.global_step} "
      f"moved={mix != start}", flush=True)
PartialState().destroy_process_group()
os._exit(0)  # skip interpreter teardown: torch 2.13 (CPU, gloo) aborts there in about 1 run in 6, after all work
"""


def test_two_ddp_processes_end_with_the_same_mixing_and_weights(tiny_bert_dir, tmp_path):
    import re

    from tests.helpers import run_torchrun

    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER)
    stdout = run_torchrun(worker, str(tiny_bert_dir), str(tmp_path / "out"))
    lines = sorted(re.findall(r"rank (\d) mix=(\S+) weight=(\S+) steps=2 moved=True", stdout))
    assert [line[0] for line in lines] == ["0", "1"], stdout
    assert lines[0][1:] == lines[1][1:]  # outer gradients averaged; inner steps synchronised by DDP


def test_a_dataset_with_a_label_column_and_raw_text_trains_as_with_trainer(tiny_bert_dir, tmp_path):
    """The held-out split kept only a fixed list of columns: 'label' (what most datasets call it) was dropped
    before the collator could rename it, and the first outer step had no loss."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    tok = load_tokenizer(tiny_bert_dir)
    rows = toy_sentences(24, 0)
    data = Dataset.from_dict({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]})
    data = data.map(lambda b: tok(b["text"], truncation=True), batched=True)  # 'text' stays, as users leave it
    model = get_peft_model(load_for_classification(tiny_bert_dir, 2, seed=0),
                           MixupBLOConfig(task_type=TaskType.SEQ_CLS, mixing_lr=0.05))
    before = _mixing(model)
    args = few_shot_training_args(str(tmp_path), BUDGET, 24, seed=0, use_cpu=True, remove_unused_columns=True)
    trainer = LowDataTrainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok),
                             processing_class=tok)
    assert "label" in trainer.objective.validation_dataset.column_names
    assert "text" not in trainer.objective.validation_dataset.column_names
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in _mixing(model).items())


def test_the_objective_on_a_model_without_mixing_says_so_at_construction(tiny_bert_dir, tmp_path):
    from peft import LoraConfig

    from hf_lowdata.training.bilevel import MixupBLOObjective

    tok = load_tokenizer(tiny_bert_dir)
    model = get_peft_model(load_for_classification(tiny_bert_dir, 2, seed=0), LoraConfig(task_type=TaskType.SEQ_CLS))
    args = few_shot_training_args(str(tmp_path), BUDGET, 24, seed=0, use_cpu=True)
    with pytest.raises(ValueError, match=r"no trainable outer parameters in this model \(its adapter: LORA\).*"
                                         r"MixupBLOConfig"):
        LowDataTrainer(model=model, args=args, train_dataset=tokenize(_data(), tok), data_collator=collator(tok),
                       objective=MixupBLOObjective())


def test_half_precision_mixing_factors_are_kept_in_float32_so_that_they_move(tiny_bert_dir, tmp_path):
    """model.to(bfloat16): the factors start at 1, where bf16's spacing (2^-8) exceeds an outer step of lr 2e-3,
    so the outer problem silently never moved."""
    config = MixupBLOConfig(task_type=TaskType.SEQ_CLS, task_weight="lora")  # the default mixing_lr 2e-3
    with pytest.warns(UserWarning, match="keeps its outer parameters in float32"):
        trainer = _trainer(tiny_bert_dir, tmp_path, config, dtype=torch.bfloat16)
    before = _mixing(trainer.model)
    assert all(v.dtype == torch.float32 for v in before.values())
    trainer.train()
    after = _mixing(trainer.model)
    assert all(not torch.equal(before[n], after[n]) for n in before)
