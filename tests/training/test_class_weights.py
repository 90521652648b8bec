"""Class-weighted cross-entropy and LowDataTrainer's ``class_weights``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_lowdata.budgets import Budget
from hf_lowdata.data import TextDataset, collator, tokenize
from hf_lowdata.models import load_for_classification, load_tokenizer
from hf_lowdata.training import (
    LowDataTrainer,
    balanced_class_weights,
    few_shot_training_args,
    weighted_cross_entropy,
)
from tests.helpers import toy_sentences

BUDGET = Budget(learning_rate=1e-3, epochs=1, min_steps=4, max_steps=4, batch_size=4, warmup_ratio=0.0)


def test_balanced_weights_give_each_class_the_same_total_and_average_one():
    labels = [0, 0, 0, 1, 2, 2]
    weights = balanced_class_weights(labels, 4)  # class 3 has no example
    torch.testing.assert_close(weights, torch.tensor([6 / 9, 2.0, 1.0, 1.0]))
    per_class = [sum(float(weights[y]) for y in labels if y == c) for c in range(3)]
    assert per_class == pytest.approx([2.0, 2.0, 2.0])
    assert sum(float(weights[y]) for y in labels) / len(labels) == pytest.approx(1.0)
    torch.testing.assert_close(balanced_class_weights([0, 1, 1, 0], 2), torch.ones(2))


@pytest.mark.parametrize("labels, num_labels, message", [
    ([0, 2], 2, "outside 0..1"), ([], 2, "at least one"), ([0], 0, "at least 1"),
])
def test_balanced_weights_refuse_what_is_not_class_indices(labels, num_labels, message):
    with pytest.raises(ValueError, match=message):
        balanced_class_weights(labels, num_labels)


def test_weighted_cross_entropy_is_the_row_mean_of_weighted_losses():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, -100])
    weights = torch.tensor([0.5, 2.0, 1.0])
    rows = F.cross_entropy(logits[:4], labels[:4], reduction="none", label_smoothing=0.1)
    expected = (weights[labels[:4]] * rows).mean()
    torch.testing.assert_close(weighted_cross_entropy(logits, labels, weights, 0.1), expected)
    # all weights 1: the plain (smoothed) cross-entropy over the labelled rows
    torch.testing.assert_close(weighted_cross_entropy(logits, labels, torch.ones(3), 0.1),
                               F.cross_entropy(logits, labels, label_smoothing=0.1))
    # a batch of one class keeps its weight (torch's weight= would divide it out again)
    same = torch.tensor([1, 1])
    torch.testing.assert_close(weighted_cross_entropy(logits[:2], same, weights),
                               2.0 * F.cross_entropy(logits[:2], same))
    assert weighted_cross_entropy(logits[:1], torch.tensor([-100]), weights).item() == 0.0


@pytest.mark.parametrize("logits, labels, weights, message", [
    (torch.randn(2, 3), torch.tensor([0.0, 1.0]), torch.ones(3), "single-label classification"),
    (torch.randn(2, 3), torch.tensor([0, 1]), torch.ones(2), "2 class weights for a model with 3 classes"),
])
def test_weighted_cross_entropy_refuses_other_heads(logits, labels, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_cross_entropy(logits, labels, weights)


def _trainer(tiny_bert_dir, out, args_overrides=None, **kwargs):
    rows = toy_sentences(12, 0)
    data = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    tok = load_tokenizer(tiny_bert_dir)
    args = few_shot_training_args(str(out), BUDGET, len(data), seed=0, use_cpu=True, report_to=[],
                                  **(args_overrides or {}))
    model = load_for_classification(tiny_bert_dir, 2, ["neg", "pos"], seed=0)
    train = tokenize(data, tok)
    return LowDataTrainer(model=model, args=args, train_dataset=train, eval_dataset=train,
                          data_collator=collator(tok), processing_class=tok, **kwargs), train, tok


def test_trainer_loss_is_the_class_weighted_loss_of_the_model_logits(tiny_bert_dir, tmp_path):
    weights = torch.tensor([0.25, 3.0])
    trainer, train, tok = _trainer(tiny_bert_dir, tmp_path, class_weights=weights)
    batch = collator(tok)([train[i] for i in range(6)])
    model = trainer.model.eval()
    with torch.no_grad():
        loss, outputs = trainer.model_loss(model, batch, return_outputs=True)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(loss, weighted_cross_entropy(logits, batch["labels"], weights))
    torch.testing.assert_close(outputs["logits"], logits)
    assert "labels" in batch  # the caller's batch is left whole (objectives reuse it)
    # evaluation scores with the same weighted loss and still returns the logits
    metrics = trainer.evaluate()
    with torch.no_grad():
        full = collator(tok)([train[i] for i in range(len(train))])
        every = model(**{k: v for k, v in full.items() if k != "labels"}).logits
    # (evaluate averages per-batch means of 8 and 4 rows)
    first = weighted_cross_entropy(every[:8], full["labels"][:8], weights)
    second = weighted_cross_entropy(every[8:], full["labels"][8:], weights)
    assert metrics["eval_loss"] == pytest.approx(float((first + second) / 2), rel=1e-5)


def test_unit_class_weights_train_like_no_weights(tiny_bert_dir, tmp_path):
    """On a balanced labelled set every balanced weight is 1: training must not change."""
    plain, _, _ = _trainer(tiny_bert_dir, tmp_path / "a")
    plain.train()
    weighted, _, _ = _trainer(tiny_bert_dir, tmp_path / "b", class_weights=[1.0, 1.0])
    weighted.train()
    a, b = dict(plain.model.named_parameters()), dict(weighted.model.named_parameters())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    skewed, _, _ = _trainer(tiny_bert_dir, tmp_path / "c", class_weights=[0.2, 5.0])
    skewed.train()
    assert not torch.allclose(a["classifier.weight"], dict(skewed.model.named_parameters())["classifier.weight"])


@pytest.mark.parametrize("weights, message", [
    ([[1.0, 2.0]], "one number per class"), ([], "one number per class"), ([1.0, float("nan")], "finite"),
    ([-1.0, 1.0], "non-negative"), ([0.0, 0.0], "not all zero"),
])
def test_bad_class_weights_are_refused_before_training(tiny_bert_dir, tmp_path, weights, message):
    with pytest.raises(ValueError, match=message):
        _trainer(tiny_bert_dir, tmp_path, class_weights=weights)


def test_class_weights_and_a_custom_loss_function_exclude_each_other(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="class_weights or compute_loss_func"):
        _trainer(tiny_bert_dir, tmp_path, class_weights=[1.0, 2.0], compute_loss_func=lambda *a, **k: None)


def test_class_weighted_loss_needs_weights(tiny_bert_dir, tmp_path):
    trainer, _, _ = _trainer(tiny_bert_dir, tmp_path)
    with pytest.raises(ValueError, match="needs class_weights="):
        trainer.class_weighted_loss(torch.zeros(2, 2), torch.tensor([0, 1]))


def test_a_model_returning_tuples_keeps_its_logits_where_trainer_looks_for_them(tiny_bert_dir, tmp_path):
    """Trainer's prediction_step drops outputs[0] (the loss, when the model had the labels): the weighted path calls
    the model without labels, so a tuple lost its logits and predict() returned no predictions."""
    from torch import nn

    class TupleModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2)

        def forward(self, features):
            return (self.linear(features),)

    trainer, _, _ = _trainer(tiny_bert_dir, tmp_path, class_weights=[1.0, 4.0])
    model, batch = TupleModel(), {"features": torch.randn(4, 3), "labels": torch.tensor([0, 1, 1, 0])}
    loss, outputs = trainer.model_loss(model, batch, return_outputs=True)
    logits = model(batch["features"])[0]
    assert outputs[0] is loss and torch.equal(outputs[1], logits)
    torch.testing.assert_close(loss, weighted_cross_entropy(logits, batch["labels"], torch.tensor([1.0, 4.0])))


def test_label_smoothing_applies_to_the_weighted_loss(tiny_bert_dir, tmp_path):
    weights = torch.tensor([0.5, 2.0])
    trainer, train, tok = _trainer(tiny_bert_dir, tmp_path, class_weights=weights)
    trainer.args.label_smoothing_factor = 0.2
    batch = collator(tok)([train[i] for i in range(6)])
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.model_loss(model, batch)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(loss, weighted_cross_entropy(logits, batch["labels"], weights, 0.2))
    assert not torch.allclose(loss, weighted_cross_entropy(logits, batch["labels"], weights))


def test_gradient_accumulation_of_weighted_losses_is_one_big_batch(tiny_bert_dir, tmp_path):
    """Each micro-batch's weighted mean is divided by the accumulation steps, as Trainer does for the model's loss."""
    def update(out, batch_size, accumulation):
        arguments = dict(per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, max_steps=1,
                         optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                         max_grad_norm=0.0)
        trainer, _, _ = _trainer(tiny_bert_dir, out, arguments, class_weights=[0.5, 3.0])
        for module in trainer.model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train()
        return {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}

    accumulated, whole = update(tmp_path / "a", 4, 2), update(tmp_path / "b", 8, 1)
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)


def test_an_objective_with_its_own_loss_refuses_class_weights(tiny_bert_dir, tmp_path):
    from hf_lowdata.training import TrainingObjective

    class OwnLoss(TrainingObjective):
        name = "own-loss"
        takes_class_weights = False

    with pytest.raises(ValueError, match="'own-loss' objective computes its own loss and does not weight classes"):
        _trainer(tiny_bert_dir, tmp_path, class_weights=[1.0, 2.0], objective=OwnLoss())
