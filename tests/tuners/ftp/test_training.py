"""FTP and TPGM under LowDataTrainer: automatic optimizer choice, radius after training, resume, drop-in use."""

from __future__ import annotations

import pytest
import torch
from peft import TaskType, get_peft_model

from hf_lowdata import FTPConfig, LowDataTrainer
from hf_lowdata.budgets import Budget
from hf_lowdata.data import TextDataset, collator, tokenize
from hf_lowdata.models import load_for_classification, load_tokenizer
from hf_lowdata.training import few_shot_training_args
from hf_lowdata.tuners.ftp import FTPObjective, FTPOptimizer, TPGMObjective
from hf_lowdata.tuners.ftp.objective import heldout_split
from hf_lowdata.tuners.ftp.optimizer import row_norms
from tests.helpers import toy_sentences

BUDGET = Budget(learning_rate=1e-2, epochs=1, min_steps=8, max_steps=8, batch_size=4, warmup_ratio=0.0, weight_decay=0.0)


def _trainer(tiny_bert_dir, out, delta: str | None = "full", objective=None, mu: float = 5e-2, class_weights=None,
             **overrides):
    tok = load_tokenizer(tiny_bert_dir)
    model = load_for_classification(tiny_bert_dir, 2, ["neg", "pos"], seed=0)
    if delta is not None:
        model = get_peft_model(model, FTPConfig(task_type=TaskType.SEQ_CLS, delta=delta, r=4, mu=mu))
    rows = toy_sentences(24, 0)
    data = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    args = few_shot_training_args(str(out), BUDGET, len(data), seed=0, use_cpu=True, **overrides)
    return LowDataTrainer(model=model, args=args, train_dataset=tokenize(data, tok), data_collator=collator(tok),
                          processing_class=tok, objective=objective, class_weights=class_weights)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_within_radius(opt: FTPOptimizer) -> int:
    """Every projected tensor (or LoRA delta) is within its radius of its anchor; returns how many were checked."""
    checked = 0
    for group in opt.param_groups:
        kind = group["projection"]
        if kind == "none":
            continue
        if kind == "lora":
            a, b = group["params"]
            units = [(b, group["lora_scale"] * b.detach() @ a.detach())]
        else:
            units = [(p, p.detach() - opt.state[p].get("anchor", torch.zeros_like(p))) for p in group["params"]]
        for key, offset in units:
            gamma = opt.state[key]["gamma"].item()
            assert (row_norms(offset, group["norm"]) <= gamma * (1 + 1e-4) + 1e-7).all()
            checked += 1
    return checked


@pytest.mark.parametrize("delta", ["full", "lora"])
def test_trainer_picks_the_ftp_optimizer_for_ftp_adapters(tiny_bert_dir, tmp_path, delta):
    trainer = _trainer(tiny_bert_dir, tmp_path, delta)
    assert isinstance(trainer.objective, FTPObjective)
    before = _params(trainer.model)
    trainer.train()
    opt = _inner(trainer.optimizer)
    assert isinstance(opt, FTPOptimizer) and opt.global_step == 8
    kinds = {group["projection"] for group in opt.param_groups}
    assert kinds == {"none", "zero" if delta == "full" else "lora"}
    head = {id(p) for g in opt.param_groups if g["projection"] == "none" for p in g["params"]}
    names = {n for n, p in trainer.model.named_parameters() if id(p) in head}
    assert names and all("modules_to_save" in n for n in names)  # the new head gets the plain update
    assert _assert_within_radius(opt) == 12  # 2 layers x 6 targeted matrices
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert any("ftp_" in n for n in changed) and any("modules_to_save" in n for n in changed)
    assert all("base_layer" not in n for n in changed)


@pytest.mark.parametrize("delta", ["full", "lora"])
def test_resume_equals_uninterrupted(tiny_bert_dir, tmp_path, delta):
    full = _trainer(tiny_bert_dir, tmp_path / "full", delta, save_strategy="steps", save_steps=4)
    full.train()
    resumed = _trainer(tiny_bert_dir, tmp_path / "resumed", delta)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    a, b = _params(full.model), _params(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    assert _inner(resumed.optimizer).global_step == 8


def test_resume_without_the_optimizer_state_differs(tiny_bert_dir, tmp_path):
    """The equality above is not automatic: a resume that loses FTP's state takes another path."""
    full = _trainer(tiny_bert_dir, tmp_path / "full", save_strategy="steps", save_steps=4)
    full.train()
    (tmp_path / "full" / "checkpoint-4" / "optimizer.pt").unlink()
    resumed = _trainer(tiny_bert_dir, tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    a, b = _params(full.model), _params(resumed.model)
    assert any(not torch.equal(a[n], b[n]) for n in a if "ftp_delta" in n)


def test_drop_in_for_full_fine_tuning(tiny_bert_dir, tmp_path):
    """A plain model with FTPObjective: every pretrained tensor is anchored to its start, the head is not."""
    start = _params(load_for_classification(tiny_bert_dir, 2, seed=0))
    trainer = _trainer(tiny_bert_dir, tmp_path, delta=None, objective=FTPObjective(mu=5e-2))
    trainer.train()
    opt = _inner(trainer.optimizer)
    by_id = {id(p): n for n, p in trainer.model.named_parameters()}
    plain = {by_id[id(p)] for g in opt.param_groups if g["projection"] == "none" for p in g["params"]}
    assert plain == {"classifier.weight", "classifier.bias"}
    for group in opt.param_groups:
        for p in group["params"]:
            if group["projection"] == "anchor":
                torch.testing.assert_close(opt.state[p]["anchor"], start[by_id[id(p)]], rtol=0, atol=0)
    assert _assert_within_radius(opt) > 30
    moved = [n for n, p in trainer.model.named_parameters() if n not in plain and not torch.equal(start[n], p)]
    assert moved  # the radii grew beyond the floor: the encoder was fine-tuned, within bounds


def test_heldout_split_is_stratified_and_deterministic():
    labels = [0] * 10 + [1] * 6 + [2] * 1
    train, held = heldout_split(labels, 0.2, seed=3)
    assert sorted(train + held) == list(range(17)) and not set(train) & set(held)
    assert [sum(labels[i] == c for i in held) for c in (0, 1, 2)] == [2, 1, 0]  # a lone example stays in training
    assert heldout_split(labels, 0.2, seed=3) == (train, held)
    assert heldout_split(labels, 0.2, seed=4) != (train, held)


def test_tpgm_trains_on_the_rest_and_constrains_the_deltas(tiny_bert_dir, tmp_path):
    trainer = _trainer(tiny_bert_dir, tmp_path, objective=TPGMObjective(lr=5e-2))
    objective = trainer.objective
    assert len(trainer.train_dataset) == 20 and len(objective.validation) == 4  # round(0.2 * 12) per class
    trainer.train()
    assert not isinstance(_inner(trainer.optimizer), FTPOptimizer)  # TPGM's base optimizer is AdamW
    gammas = torch.stack([g.detach() for g in objective.gammas])
    assert objective.initialised and (gammas >= 1e-8).all()
    radius_steps = trainer.auxiliary_optimizers["tpgm"].optimizer.state_dict()["state"][0]["step"]
    assert int(radius_steps) == 8  # one radius step on held-out data per optimizer step
    for unit, gamma in zip(objective.units, objective.gammas):
        assert (row_norms(unit.params[0].detach(), "mars") <= gamma.item() * (1 + 1e-4) + 1e-7).all()
    assert any(unit.params[0].detach().abs().sum() > 0 for unit in objective.units)


def test_tpgm_weights_its_held_out_loss_as_the_training_loss(tiny_bert_dir, tmp_path, monkeypatch):
    """The radius step took the model's own (unweighted) loss although training used class weights."""
    weights = torch.tensor([0.5, 3.0])
    trainer = _trainer(tiny_bert_dir, tmp_path, objective=TPGMObjective(lr=5e-2), class_weights=weights, max_steps=2)
    seen, step = [], trainer.step_auxiliary

    def record(name, loss):
        seen.append(loss.detach().clone())
        return step(name, loss)

    monkeypatch.setattr(trainer, "step_auxiliary", record)
    calls = []
    real = trainer.class_weighted_loss
    monkeypatch.setattr(trainer, "class_weighted_loss", lambda logits, labels, *a: calls.append(
        (logits.detach(), labels, trainer.model.training)) or real(logits, labels, *a))
    trainer.train()
    held_out = [(logits, labels) for logits, labels, training in calls if not training]  # (TPGM's step runs in eval)
    assert len(seen) == 2 and len(held_out) == 2 and len(calls) > 2  # the training batches were weighted too
    from hf_lowdata.training import weighted_cross_entropy

    logits, labels = held_out[-1]
    torch.testing.assert_close(seen[-1], weighted_cross_entropy(logits, labels, weights))


def test_tpgm_resume_equals_uninterrupted(tiny_bert_dir, tmp_path):
    full = _trainer(tiny_bert_dir, tmp_path / "full", objective=TPGMObjective(lr=5e-2), save_strategy="steps", save_steps=4)
    full.train()
    resumed = _trainer(tiny_bert_dir, tmp_path / "resumed", objective=TPGMObjective(lr=5e-2))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    a, b = _params(full.model), _params(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    for g, h in zip(full.objective.gammas, resumed.objective.gammas):
        torch.testing.assert_close(g, h, rtol=0, atol=0)


def test_tpgm_without_constrainable_tensors_is_a_clear_error(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="TPGM found no trainable tensor with a pretrained value"):
        trainer = _trainer(tiny_bert_dir, tmp_path, delta=None, objective=TPGMObjective())
        for n, p in trainer.model.named_parameters():
            p.requires_grad_(n.startswith("classifier"))
        trainer.objective.setup(trainer)


def test_tpgm_holds_out_from_a_dataset_with_a_label_column_and_raw_text(tiny_bert_dir, tmp_path):
    """TPGM required a 'labels' column and collated the held-out rows with their raw 'text'."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    tok = load_tokenizer(tiny_bert_dir)
    rows = toy_sentences(24, 0)
    data = Dataset.from_dict({"text": [r["text"] for r in rows], "label": [r["label"] for r in rows]})
    data = data.map(lambda b: tok(b["text"], truncation=True), batched=True)
    model = get_peft_model(load_for_classification(tiny_bert_dir, 2, ["neg", "pos"], seed=0),
                           FTPConfig(task_type=TaskType.SEQ_CLS))
    args = few_shot_training_args(str(tmp_path), BUDGET, 24, seed=0, use_cpu=True, remove_unused_columns=True)
    trainer = LowDataTrainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok),
                             processing_class=tok, objective=TPGMObjective(lr=5e-2))
    assert len(trainer.objective.validation) == 4 and "text" not in trainer.objective.validation.column_names
    trainer.train()
    assert trainer.objective.initialised
