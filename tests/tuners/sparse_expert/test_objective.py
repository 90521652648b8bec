"""SMAT meta-training: sparsity target reached, exact resume, the grouped optimizer, clear errors."""

from __future__ import annotations

import pytest
import torch

from hf_lowdata.budgets import Budget
from hf_lowdata.training import LowDataTrainer, few_shot_training_args
from hf_lowdata.tuners.sparse_expert import GroupedOptimizer, SparseExpertObjective
from tests.tuners.sparse_expert.helpers import episodes, smat_encoder


def _trainer(tiny_bert_dir, out, steps, ga=1, objective=None, config=None, **overrides):
    model = smat_encoder(tiny_bert_dir, **(config or {}))
    budget = Budget(learning_rate=5e-3, epochs=1, min_steps=steps, max_steps=steps, batch_size=1, warmup_ratio=0.1)
    args = few_shot_training_args(str(out), budget, 1, seed=0, use_cpu=True, gradient_accumulation_steps=ga,
                                  lr_scheduler_type="cosine", **overrides)
    return LowDataTrainer(model=model, args=args, train_dataset=episodes(tiny_bert_dir, steps * ga),
                          objective=objective)


def _adapter_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_masks_reach_the_sparsity_target_on_a_toy_run(tiny_bert_dir, tmp_path):
    trainer = _trainer(tiny_bert_dir, tmp_path, steps=30)
    assert isinstance(trainer.objective, SparseExpertObjective)  # picked for SparseExpert adapters
    start = trainer.model.base_model.mask_sparsity()
    trainer.train()
    tuner = trainer.model.base_model
    sparsity = tuner.mask_sparsity()
    assert float(start.max()) < 0.05
    assert (sparsity >= 0.88).all() and (sparsity < 0.995).all(), sparsity  # reached, not collapsed
    history = trainer.objective.history
    assert len(history) == 30 and history[-1]["target_sparsity"] == pytest.approx(0.9)
    tuner.binarize_masks()
    torch.testing.assert_close(tuner.mask_sparsity(), sparsity)
    bits = sum(layer.sparse_expert_bits["default"].numel() for _, layer in tuner.expert_layers()) * 8
    entries = sum(layer.sparse_expert_delta["default"].numel() for _, layer in tuner.expert_layers()) * 8
    assert bits <= entries  # at most one bit per mask entry


def test_the_late_phase_meta_trains_with_the_binary_masks_it_deploys(tiny_bert_dir, tmp_path):
    trainer = _trainer(tiny_bert_dir, tmp_path, steps=8, objective=SparseExpertObjective(binary_masks_from=0.5))
    tuner = trainer.model.base_model
    _, layer = tuner.expert_layers()[0]
    cached, seen, logits = layer._cached_masks, [], {}

    def spy(adapter):
        masks = cached(adapter)
        seen.append((trainer.state.global_step, bool(((masks == 0) | (masks == 1)).all())))
        logits.setdefault(trainer.state.global_step, layer.sparse_expert_logits[adapter].detach().clone())
        return masks

    layer._cached_masks = spy
    trainer.train()
    assert {step for step, binary in seen if binary} == {4, 5, 6, 7}  # from half of the 8 steps on
    assert not any(binary for step, binary in seen if step < 4)
    assert not torch.equal(logits[4], logits[7])  # the logits still learn (straight through)
    final = (layer.sparse_expert_logits["default"] > layer.sparse_expert_settings["default"].mask_threshold_logit)
    tuner.binarize_masks()
    assert torch.equal(layer.expert_masks("default").bool(), final)  # what is stored is what was trained with


def test_resume_equals_uninterrupted_meta_training(tiny_bert_dir, tmp_path):
    full = _trainer(tiny_bert_dir, tmp_path / "full", steps=6, ga=2, save_strategy="steps", save_steps=3)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / "objective_state.safetensors").is_file()
    resumed = _trainer(tiny_bert_dir, tmp_path / "resumed", steps=6, ga=2)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = _adapter_state(full.model), _adapter_state(resumed.model)
    assert a.keys() == b.keys() and any("sparse_expert_logits" in k for k in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(full.objective.multipliers, resumed.objective.multipliers, rtol=0, atol=0)
    assert full.objective.history[-1]["sparsity"] == resumed.objective.history[-1]["sparsity"]
    start = smat_encoder(tiny_bert_dir)
    moved = [n for n, p in _adapter_state(start).items() if not torch.equal(p, a[n])]
    assert any("sparse_expert_delta" in n for n in moved) and any("router" in n for n in moved)


def test_a_resumed_run_keeps_the_whole_history_of_its_objective(tiny_bert_dir, tmp_path):
    """The objective's per-step history was not checkpointed: a LowDataTrainer run resumed from checkpoint-3 had
    the history of steps 4 to 6 only."""
    full = _trainer(tiny_bert_dir, tmp_path / "full", steps=6, objective=SparseExpertObjective(),
                    save_strategy="steps", save_steps=3)
    full.train()
    assert len(full.objective.history) == 6
    checkpoint = tmp_path / "full" / "checkpoint-3"
    assert (checkpoint / "objective_state.json").is_file()
    resumed = _trainer(tiny_bert_dir, tmp_path / "resumed", steps=6, objective=SparseExpertObjective())
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.objective.history == full.objective.history
    # a checkpoint without the file (an older hf_lowdata's) still resumes, and says what it cannot restore
    (checkpoint / "objective_state.json").unlink()
    older = _trainer(tiny_bert_dir, tmp_path / "older", steps=6, objective=SparseExpertObjective())
    with pytest.warns(UserWarning, match=r"no objective_state.json .*of the steps up to 3 is not restored"):
        older.train(resume_from_checkpoint=str(checkpoint))
    assert older.objective.history == full.objective.history[3:]


def test_dense_meta_tuning_keeps_every_mask_on(tiny_bert_dir, tmp_path):
    trainer = _trainer(tiny_bert_dir, tmp_path, steps=3, objective=SparseExpertObjective(learn_masks=False),
                       config={"num_experts": 1, "target_sparsity": 0.0})
    before = _adapter_state(trainer.model)
    trainer.train()
    assert float(trainer.model.base_model.mask_sparsity().max()) == 0.0
    after = _adapter_state(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before if "sparse_expert_delta" in n)


def test_non_episodic_data_and_binary_masks_are_refused(tiny_bert_dir, tmp_path):
    from hf_lowdata.data import tokenize
    from hf_lowdata.models import load_tokenizer
    from tests.tuners.sparse_expert.helpers import toy_text

    model = smat_encoder(tiny_bert_dir)
    args = few_shot_training_args(str(tmp_path), Budget(learning_rate=1e-3, min_steps=1, max_steps=1), 1, use_cpu=True)
    plain = tokenize(toy_text(8, 0), load_tokenizer(tiny_bert_dir))
    with pytest.raises(TypeError, match="pass train_dataset=EpisodeDataset"):
        LowDataTrainer(model=model, args=args, train_dataset=plain)
    binary = smat_encoder(tiny_bert_dir, masks="binary")
    with pytest.raises(ValueError, match="binary masks, which cannot be meta-trained"):
        LowDataTrainer(model=binary, args=args, train_dataset=episodes(tiny_bert_dir, 1))
    with pytest.raises(ValueError, match="distill_weight"):
        SparseExpertObjective(distill_weight=2.0)


def test_gradient_checkpointing_is_refused_with_what_to_change(tiny_bert_dir, tmp_path):
    """Checkpointed layers recompute with the pretrained weights, not the episode's functional ones: torch
    failed mid-run with "A different number of tensors was saved during the original forward and recomputation"."""
    with pytest.raises(ValueError, match="cannot run with gradient checkpointing.*gradient_checkpointing=False"):
        _trainer(tiny_bert_dir, tmp_path / "args", 2, gradient_checkpointing=True)
    model = smat_encoder(tiny_bert_dir)
    model.get_base_model().gradient_checkpointing_enable()
    args = few_shot_training_args(str(tmp_path / "model"), Budget(learning_rate=1e-3, min_steps=1, max_steps=1), 1,
                                  use_cpu=True)
    with pytest.raises(ValueError, match="gradient_checkpointing_disable"):
        LowDataTrainer(model=model, args=args, train_dataset=episodes(tiny_bert_dir, 1))


def _reference_step(cls, **kwargs):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = cls([p], **kwargs)
    for i in range(3):
        p.grad = torch.arange(5.0) - i
        opt.step()
    return p.detach()


@pytest.mark.parametrize(
    ("group", "reference"),
    [
        ({"algorithm": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2},
         (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-2})),
        ({"algorithm": "adamw", "lr": 0.01, "weight_decay": 0.1},
         (torch.optim.AdamW, {"lr": 0.01, "weight_decay": 0.1})),
        ({"algorithm": "sgd", "lr": 0.1, "maximize": True}, (torch.optim.SGD, {"lr": 0.1, "maximize": True})),
    ],
)
def test_grouped_optimizer_matches_torch(group, reference):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    opt = GroupedOptimizer([{"params": [p], **group}])
    for i in range(3):
        p.grad = torch.arange(5.0) - i
        opt.step()
    torch.testing.assert_close(p.detach(), _reference_step(reference[0], **reference[1]))


def test_grouped_optimizer_clips_per_group_and_fixed_lr_ignores_the_schedule():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = GroupedOptimizer([{"params": [a], "lr": 1.0, "max_grad_norm": 1.0}, {"params": [b], "lr": 1.0, "fixed_lr": 2.0}])
    for group in opt.param_groups:
        group["lr"] = 0.5  # what a scheduler would do
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.0])
    opt.step()
    torch.testing.assert_close(a.detach(), torch.tensor([-0.3, -0.4]))  # clipped to norm 1, lr 0.5
    torch.testing.assert_close(b.detach(), torch.tensor([-6.0, -8.0]))  # not clipped, fixed lr 2


def test_default_mask_learning_rate_follows_the_runs_step_count():
    from types import SimpleNamespace

    objective = SparseExpertObjective()
    # trained by epochs: args.max_steps is -1, Trainer's state holds the real count (40 steps -> 8/40)
    by_epochs = SimpleNamespace(args=SimpleNamespace(max_steps=-1), state=SimpleNamespace(max_steps=40))
    assert objective._mask_lr(by_epochs) == pytest.approx(0.2)
    by_steps = SimpleNamespace(args=SimpleNamespace(max_steps=400), state=SimpleNamespace(max_steps=0))
    assert objective._mask_lr(by_steps) == pytest.approx(0.02)


def test_evaluate_and_predict_on_held_out_episodes(tiny_bert_dir, tmp_path):
    # Trainer.evaluate / predict failed on episode batches ("The batch received was empty")
    import numpy as np

    def accuracy(prediction):
        logits, labels = prediction.predictions, prediction.label_ids
        return {"accuracy": float((logits.argmax(-1) == labels).mean())}

    trainer = _trainer(tiny_bert_dir, tmp_path, 2)
    trainer.compute_metrics = accuracy
    trainer.train()
    held_out = episodes(tiny_bert_dir, 3, seed=7)
    metrics = trainer.evaluate(held_out)
    assert np.isfinite(metrics["eval_loss"]) and 0.0 <= metrics["eval_accuracy"] <= 1.0
    output = trainer.predict(held_out)
    queries = sum(len(held_out[i]["query_labels"]) for i in range(len(held_out)))
    assert output.label_ids.shape == (queries,) and output.predictions.shape[0] == queries


def test_held_out_episodes_of_other_texts_get_their_own_features(tiny_bert_dir, tmp_path):
    """The frozen-feature memo is keyed by (source, example) of the training episodes: evaluating on
    another EpisodeDataset with the same indices routed with the training texts' prototypes."""
    from hf_lowdata.models import load_tokenizer
    from hf_lowdata.training.episodes import EpisodeDataset, TextSource
    from hf_lowdata.tuners.sparse_expert.model import class_prototypes, feature_backbone, pooled_features
    from tests.tuners.sparse_expert.helpers import toy_text

    trainer = _trainer(tiny_bert_dir, tmp_path, 2)
    trainer.train()
    trainer.evaluate(episodes(tiny_bert_dir, 30, seed=3))  # the training sources' texts, most indices
    tok = load_tokenizer(tiny_bert_dir)
    other = EpisodeDataset([TextSource(toy_text(60, 5), tok, name="c")], 3, seed=7, shot=(1, 2), query_per_class=2)
    tuner = trainer.model.base_model
    routed, route = [], tuner.router_logits
    tuner.router_logits = lambda prototypes, adapter=None: routed.append(prototypes) or route(prototypes, adapter)
    trainer.evaluate(other)
    backbone = feature_backbone(trainer.model)
    assert len(routed) == len(other)
    for i, prototypes in enumerate(routed):
        episode = other[i]
        with torch.no_grad(), tuner.bypass():
            features = pooled_features(backbone.eval(), episode["support"])
        expected = class_prototypes(features, episode["support_labels"], int(episode["support_labels"].max()) + 1)
        torch.testing.assert_close(prototypes, expected, rtol=0, atol=1e-5)


def test_the_callers_training_arguments_are_left_as_they_were(tiny_bert_dir, tmp_path):
    """Meta-training clips per parameter group; turning the global clip off on the caller's own object turned it
    off for every later Trainer built from the same arguments."""
    args = few_shot_training_args(str(tmp_path), Budget(learning_rate=1e-3, min_steps=1, max_steps=1), 1,
                                  use_cpu=True)
    assert args.max_grad_norm == 1.0
    trainer = LowDataTrainer(model=smat_encoder(tiny_bert_dir), args=args, train_dataset=episodes(tiny_bert_dir, 1))
    assert trainer.args.max_grad_norm == 0.0 and args.max_grad_norm == 1.0


def test_held_out_evaluation_scores_the_masks_meta_training_deploys(tiny_bert_dir, tmp_path):
    """Evaluation used the relaxed masks at temperature 1, which keep entries the binarized (deployed) masks drop:
    its loss belonged to neither the trained nor the deployed model."""
    trainer = _trainer(tiny_bert_dir, tmp_path, 30)  # long enough for the masks to reach their sparsity
    trainer.train()
    _, layer = trainer.model.base_model.expert_layers()[0]
    relaxed = layer.expert_masks("default", beta=1.0)
    assert ((relaxed > 0) & ~layer.kept_entries("default")).any()  # entries the two masks disagree on
    torch.manual_seed(0)
    for _, layer in trainer.model.base_model.expert_layers():  # deltas large enough for the masks to show
        layer.sparse_expert_delta["default"].data.normal_(0, 0.2)
    held_out = episodes(tiny_bert_dir, 3, seed=7)
    during = trainer.evaluate(held_out)["eval_loss"]
    trainer.model.base_model.binarize_masks()  # what meta_train deploys
    assert trainer.evaluate(held_out)["eval_loss"] == pytest.approx(during, rel=1e-6, abs=1e-7)


def test_multipliers_come_down_when_the_masks_are_sparser_than_a_target_above_0_9999(tiny_bert_dir, tmp_path):
    """The density was floored at 1e-4, above a target density under 1e-4: the multipliers could only rise."""
    trainer = _trainer(tiny_bert_dir, tmp_path, 2, config={"target_sparsity": 0.99995})
    trainer.train()
    tuner, objective = trainer.model.base_model, trainer.objective
    for _, layer in tuner.expert_layers():
        layer.sparse_expert_logits["default"].data.fill_(-1e3)  # every mask entry off: density 0 < target
    tuner.clamp_mask_logits()
    objective.multipliers = torch.ones_like(objective.multipliers)
    objective.on_optimizer_step(trainer, trainer.model)  # at the end of training: target density 5e-5
    assert (objective.multipliers < 1).all(), objective.multipliers
