"""TwinTurbo's loss terms on toy inputs, the alternating discriminator step, training and exact resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_lowdata.budgets import Budget
from hf_lowdata.data import collator, tokenize
from hf_lowdata.features import FeatureCache, TokenStateDataset, collate_token_states, text_token_states
from hf_lowdata.models import load_encoder
from hf_lowdata.training import LowDataTrainer, few_shot_training_args
from hf_lowdata.tuners.twin_turbo import LabelDiscriminator, TwinTurboObjective, twin_turbo_layer
from hf_lowdata.tuners.twin_turbo.objectives import (
    alignment,
    classify_and_count,
    conditional_loss,
    info_nce,
    label_prior,
    marginal_cross_entropy,
)
from tests.helpers import toy_sentences
from tests.tuners.twin_turbo.helpers import tiny_model, tokenizer, toy_text

BUDGET = Budget(learning_rate=1e-3, epochs=1, min_steps=8, max_steps=8, batch_size=8, warmup_ratio=0.0)


def test_marginal_term_is_smallest_for_class_balanced_predictions():
    prior = torch.full((3,), 1 / 3)
    balanced = torch.eye(3).repeat(2, 1)  # confident, but every class equally often
    collapsed = F.one_hot(torch.zeros(6, dtype=torch.long), 3).float() * 0.98 + 0.01
    skewed = torch.tensor([[0.6, 0.3, 0.1]] * 6)
    values = [marginal_cross_entropy(p, prior) for p in (balanced, skewed, collapsed)]
    assert all(torch.isfinite(v) for v in values)
    assert values[0] < values[1] < values[2]
    torch.testing.assert_close(values[0], torch.tensor(math.log(3)))  # = H(p) at qbar = p
    imbalanced = torch.tensor([0.75, 0.25])  # the minimum moves with the prior
    q = torch.tensor([[0.75, 0.25]] * 4)
    assert marginal_cross_entropy(q, imbalanced) < marginal_cross_entropy(torch.full((4, 2), 0.5), imbalanced)


def test_conditional_losses_of_the_three_heads():
    logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0]])
    labels = torch.tensor([0, 1])
    for kind in ("categorical", "binary", "infonce"):
        right, wrong = conditional_loss(kind, logits, labels), conditional_loss(kind, logits, 1 - labels)
        assert torch.isfinite(right) and right < 0.05 < wrong
    binary = conditional_loss("binary", logits, labels)
    torch.testing.assert_close(binary, F.binary_cross_entropy_with_logits(logits, torch.eye(2)))
    # Trainer's label_smoothing_factor (it was ignored in training): Trainer's own smoothed cross-entropy
    smoothed = conditional_loss("categorical", logits, labels, smoothing=0.1)
    log_p = F.log_softmax(logits, -1)
    trainer_smoothed = (0.9 * -log_p.gather(1, labels[:, None]).squeeze(1) + 0.1 * -log_p.mean(-1)).mean()
    torch.testing.assert_close(smoothed, trainer_smoothed)
    target = torch.eye(2) * 0.9 + 0.05
    torch.testing.assert_close(conditional_loss("binary", logits, labels, smoothing=0.1),
                               F.binary_cross_entropy_with_logits(logits, target))


def test_class_weights_weight_each_rows_conditional_loss():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 2, -100])
    weights = torch.tensor([3.0, 1.0, 0.5])
    for kind in ("categorical", "infonce"):
        rows = F.cross_entropy(logits[:3], labels[:3], reduction="none")
        torch.testing.assert_close(conditional_loss(kind, logits, labels, class_weights=weights),
                                   (weights[labels[:3]] * rows).mean())
    rows = F.binary_cross_entropy_with_logits(logits[:3], F.one_hot(labels[:3], 3).float(), reduction="none").mean(-1)
    torch.testing.assert_close(conditional_loss("binary", logits, labels, class_weights=weights),
                               (weights[labels[:3]] * rows).mean())
    for kind in ("categorical", "binary"):  # all weights 1: the unweighted loss
        torch.testing.assert_close(conditional_loss(kind, logits, labels, class_weights=torch.ones(3)),
                                   conditional_loss(kind, logits, labels))


def test_info_nce_and_alignment_are_lower_for_aligned_pairs():
    torch.manual_seed(0)
    u = torch.randn(16, 8)
    v_aligned = u + 0.05 * torch.randn(16, 8)
    v_shuffled = v_aligned[torch.randperm(16)]
    assert info_nce(u, v_aligned, 0.1) < info_nce(u, v_shuffled, 0.1)
    assert alignment(u, v_aligned) < alignment(u, v_shuffled)
    torch.testing.assert_close(alignment(u, 3 * u), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_discriminator_learns_one_hots_from_soft_predictions():
    torch.manual_seed(0)
    d = LabelDiscriminator(3, 16)
    opt = torch.optim.Adam(d.parameters(), lr=1e-2, betas=(0.5, 0.999))
    real = F.one_hot(torch.randint(0, 3, (64,)), 3).float()
    fake = torch.softmax(0.3 * torch.randn(64, 3), -1)
    start = d.loss(real, fake).item()
    for _ in range(100):
        opt.zero_grad()
        d.loss(real, fake).backward()
        opt.step()
    assert d.loss(real, fake).item() < 0.5 * start
    assert d.generator_loss(real) < d.generator_loss(fake)  # confident predictions now fool it better


def test_label_prior():
    torch.testing.assert_close(label_prior("labelled", [0, 0, 0, 1], 2), torch.tensor([0.75, 0.25]))
    torch.testing.assert_close(label_prior("uniform", [0, 0, 0, 1], 2), torch.tensor([0.5, 0.5]))


def test_classify_and_count_estimates_an_uneven_pool_from_a_balanced_labelled_set():
    """A k-shot labelled set is balanced whatever the pool holds; its frequencies (the "labelled" prior) pulled the
    predictions on a 9 / 45 / 46 % pool towards a third each."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=generator) * 4

    def draw(counts):
        labels = [c for c, n in enumerate(counts) for _ in range(n)]
        return centres[labels] + torch.randn(len(labels), 16, generator=generator), labels

    labelled, labels = draw([4, 4, 4])
    pool, _ = draw([100, 450, 450])
    torch.testing.assert_close(classify_and_count(labelled, labels, pool, 3), torch.tensor([0.1, 0.45, 0.45]),
                               atol=0.02, rtol=0)
    without_class_0, _ = draw([0, 500, 500])
    prior = classify_and_count(labelled, labels, without_class_0, 3)
    assert prior[0] >= 0.0099 and math.isclose(float(prior.sum()), 1.0, rel_tol=1e-6)  # the floor: never log(0)
    torch.testing.assert_close(classify_and_count(labelled[:4], labels[:4], pool, 3),  # one class: nothing to count
                               label_prior("labelled", labels[:4], 3))


@pytest.mark.parametrize("cached", [True, False])
def test_the_estimated_prior_counts_the_probes_predictions_on_the_pool(tiny_bert_dir, tmp_path, cached):
    """The default label_prior: the probe on the labelled examples' pooled states, counted on the pool's, from
    cached token states or through the backbone alike."""
    from hf_lowdata.tuners.twin_turbo.layer import masked_mean

    trainer = _trainer(tiny_bert_dir, tmp_path, cached=cached)
    states = [_cached(tiny_bert_dir, d) for d in (toy_text(16, 0), toy_text(24, 5, labelled=False))]
    pooled = [torch.stack([masked_mean(s[None], torch.ones(1, len(s), dtype=torch.bool))[0] for s in d.states])
              for d in states]
    expected = classify_and_count(pooled[0], list(states[0].labels), pooled[1], 2)
    torch.testing.assert_close(trainer.objective.prior, expected)
    assert trainer.objective.config.label_prior == "estimated"


def test_the_estimated_prior_is_the_labelled_one_without_a_pool_or_the_terms_that_read_it(tiny_bert_dir, tmp_path,
                                                                                           monkeypatch):
    counted = []
    original = TwinTurboObjective.pooled_states
    monkeypatch.setattr(TwinTurboObjective, "pooled_states",
                        lambda self, *a, **k: counted.append(1) or original(self, *a, **k))
    no_pool = _trainer(tiny_bert_dir, tmp_path / "a", unlabelled=False)
    ce_only = LowDataTrainer(model=tiny_model(tiny_bert_dir, marginal_weight=0.0, adversarial_weight=0.0),
                             args=few_shot_training_args(str(tmp_path / "b"), BUDGET, 16, seed=0, use_cpu=True),
                             train_dataset=_cached(tiny_bert_dir, toy_text(16, 0)), data_collator=collate_token_states,
                             unlabeled_dataset=_cached(tiny_bert_dir, toy_text(24, 5, labelled=False)),
                             unlabeled_batch_size=8)
    for trainer in (no_pool, ce_only):
        torch.testing.assert_close(trainer.objective.prior, torch.tensor([0.5, 0.5]))
    assert counted == []  # no pass over the data for a prior nothing reads


def _cached(folder, data):
    states = text_token_states(FeatureCache(dtype=torch.float32), load_encoder(folder), tokenizer(folder),
                               data.texts, 64, "tiny")
    return TokenStateDataset(states, data.labels)


def _trainer(folder, out, cached=True, unlabelled=True, seed=0, dtype=None, **args):
    model = tiny_model(folder) if dtype is None else tiny_model(folder).to(dtype)
    labelled, pool = toy_text(16, 0), toy_text(24, 5, labelled=False)
    train_args = few_shot_training_args(str(out), BUDGET, 16, seed=seed, use_cpu=True, **args)
    if cached:
        data = dict(train_dataset=_cached(folder, labelled), data_collator=collate_token_states,
                    unlabeled_dataset=_cached(folder, pool) if unlabelled else None)
    else:
        tok = tokenizer(folder)
        data = dict(train_dataset=tokenize(labelled, tok), data_collator=collator(tok), processing_class=tok,
                    unlabeled_dataset=pool if unlabelled else None)
    return LowDataTrainer(model=model, args=train_args, unlabeled_batch_size=8, **data)


def test_training_updates_only_the_adapter_with_every_term_finite(tiny_bert_dir, tmp_path):
    trainer = _trainer(tiny_bert_dir, tmp_path, cached=False)
    assert isinstance(trainer.objective, TwinTurboObjective)  # picked from the adapter type
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    terms = trainer.objective.last_terms
    assert set(terms) == {"cond", "marginal", "adversarial", "latent"}
    assert all(math.isfinite(v) for v in terms.values())
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("twin_turbo_" in n for n in changed)
    assert set(trainer.auxiliary_optimizers) == {"discriminator", "critics"}


def test_a_bfloat16_adapter_trains_with_every_term(tiny_bert_dir, tmp_path):
    """model.to(bfloat16) (or autocast_adapter_dtype=False on a bf16 base) gives bf16 adapter weights, as
    with LoRA: the discriminator and critics (fp32, training only) failed on their bf16 inputs."""
    trainer = _trainer(tiny_bert_dir, tmp_path, cached=False, dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "twin_turbo_" in n}
    assert all(p.dtype == torch.bfloat16 for p in before.values())
    trainer.train()
    assert all(math.isfinite(v) for v in trainer.objective.last_terms.values())
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if n in before)


def test_discriminator_step_touches_only_the_discriminator(tiny_bert_dir, tmp_path):
    trainer = _trainer(tiny_bert_dir, tmp_path, cached=True)
    trainer.objective.critics = None
    trainer.create_optimizer()
    objective, model = trainer.objective, trainer.model
    model.train()
    batch = collate_token_states([trainer.train_dataset[i] for i in range(8)])
    objective.compute_loss(trainer, model, batch)
    model_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    d_before = [p.detach().clone() for p in objective.discriminator.parameters()]
    objective.on_optimizer_step(trainer, model)
    assert all(torch.equal(model_before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(d_before, objective.discriminator.parameters()))


def test_ce_only_mode_has_no_auxiliary_parts(tiny_bert_dir, tmp_path):
    trainer = _trainer(tiny_bert_dir, tmp_path, unlabelled=False)
    cfg = trainer.objective.config
    cfg.marginal_weight = cfg.adversarial_weight = cfg.latent_weight = 0.0
    objective = TwinTurboObjective(cfg)
    objective.setup(trainer)
    assert objective.discriminator is None and objective.critics is None
    assert objective.create_auxiliary_optimizers(trainer, trainer.model) == {}
    trainer.model.train()
    batch = collate_token_states([trainer.train_dataset[i] for i in range(8)])
    loss = objective.compute_loss(trainer, trainer.model, batch)
    layer = twin_turbo_layer(trainer.model)
    expected = F.cross_entropy(layer.classify(layer.encode(batch["token_states"], batch["token_mask"])),
                               batch["labels"])
    assert set(objective.last_terms) == {"cond"} and torch.isfinite(loss)
    assert abs(loss.item() - expected.item()) < 0.5  # same loss up to dropout


def test_without_unlabelled_data_the_terms_use_the_labelled_batch(tiny_bert_dir, tmp_path):
    trainer = _trainer(tiny_bert_dir, tmp_path, unlabelled=False)
    trainer.train()
    assert set(trainer.objective.last_terms) == {"cond", "marginal", "adversarial", "latent"}


def test_resume_equals_uninterrupted_run_including_discriminator_and_its_optimizer(tiny_bert_dir, tmp_path):
    full = _trainer(tiny_bert_dir, tmp_path / "full", save_strategy="steps", save_steps=4)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-4"
    assert (checkpoint / "objective_state.safetensors").is_file()
    resumed = _trainer(tiny_bert_dir, tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    for key, value in full.objective.state_dict().items():
        torch.testing.assert_close(value, resumed.objective.state_dict()[key], atol=0, rtol=0, msg=key)
    for name in ("discriminator", "critics"):
        a = full.auxiliary_optimizers[name].optimizer.state_dict()["state"]
        b = resumed.auxiliary_optimizers[name].optimizer.state_dict()["state"]
        assert a[0]["step"] == b[0]["step"] == 8
        torch.testing.assert_close(a[0]["exp_avg"], b[0]["exp_avg"], atol=0, rtol=0)


def test_resume_without_the_discriminator_state_is_refused(tiny_bert_dir, tmp_path):
    """The check above can fail: a discriminator restarted from scratch would change the trajectory, so a checkpoint
    without the objective's state is refused (it resumed silently with a fresh discriminator)."""
    full = _trainer(tiny_bert_dir, tmp_path / "full", save_strategy="steps", save_steps=4)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-4"
    (checkpoint / "objective_state.safetensors").unlink()
    resumed = _trainer(tiny_bert_dir, tmp_path / "resumed")
    with pytest.raises(FileNotFoundError, match="no objective_state.safetensors"):
        resumed.train(resume_from_checkpoint=str(checkpoint))


@pytest.mark.parametrize("bad", ["nan", "shape"])
def test_bad_batches_fail_clearly(tiny_bert_dir, tmp_path, bad):
    trainer = _trainer(tiny_bert_dir, tmp_path)
    trainer.create_optimizer()
    trainer.model.train()
    batch = collate_token_states([trainer.train_dataset[i] for i in range(4)])
    if bad == "nan":
        batch["token_states"][0, 0, 0] = float("nan")
        loss = trainer.objective.compute_loss(trainer, trainer.model, batch)
        assert not torch.isfinite(loss)  # LowDataTrainer turns this into NonFiniteLossError
    else:
        batch["token_states"] = batch["token_states"][..., :5]
        with pytest.raises(ValueError, match=r"expects token states \(B, T, 32\).*another backbone"):
            trainer.objective.compute_loss(trainer, trainer.model, batch)


def test_objective_tensors_and_modules_follow_the_model_device(tiny_bert_dir, tmp_path):
    """Regression (CUDA runs failed "cuda:0 and cpu"): the prior, discriminator and critics must live on the
    model's device when training starts, and the loss terms must not mix in CPU tensors. The "meta" device
    stands in for a GPU: it allocates nothing, and meta mixed with CPU tensors raises like cuda mixed with cpu."""
    trainer = _trainer(tiny_bert_dir, tmp_path)
    objective, model = trainer.objective, trainer.model
    assert objective.prior.device.type == "cpu" == objective.discriminator.net[0].weight.device.type
    model.to("meta")  # the model moved after setup() (Trainer / accelerate place it before training)
    assert set(objective.create_auxiliary_optimizers(trainer, model)) == {"discriminator", "critics"}
    tensors = [objective.prior, *objective.discriminator.parameters(), *objective.critics.parameters()]
    assert all(t.device.type == "meta" for t in tensors)
    probs = torch.full((4, 2), 0.5, device="meta")
    assert marginal_cross_entropy(probs, torch.tensor([0.25, 0.75])).device.type == "meta"  # a CPU prior follows too
    assert objective.discriminator.generator_loss(probs).device.type == "meta"


def test_the_labelled_prior_reads_a_label_column_skips_unlabelled_marks_and_warns_without_labels(tiny_bert_dir,
                                                                                                  tmp_path):
    """A 'label' column gave a silent uniform prior; -100 (the usual 'no label') crashed the constructor."""
    from datasets import Dataset

    tok = tokenizer(tiny_bert_dir)
    texts = [r["text"] for r in toy_sentences(15, 0)]
    encoded = dict(tok(texts, truncation=True))
    args = few_shot_training_args(str(tmp_path), BUDGET, 15, seed=0, use_cpu=True)

    def prior(labels: dict) -> torch.Tensor:
        data = Dataset.from_dict({**encoded, **labels})
        trainer = LowDataTrainer(model=tiny_model(tiny_bert_dir, label_prior="labelled"), args=args, train_dataset=data,
                                 data_collator=collator(tok), processing_class=tok,
                                 unlabeled_dataset=toy_text(8, 5, labelled=False))
        return trainer.objective.prior

    torch.testing.assert_close(prior({"label": [0] * 12 + [1] * 3}), torch.tensor([0.8, 0.2]))
    torch.testing.assert_close(prior({"labels": [0] * 9 + [1] * 3 + [-100] * 3}), torch.tensor([0.75, 0.25]))
    with pytest.warns(UserWarning, match="found no labels in train_dataset.*uniform prior"):
        torch.testing.assert_close(prior({"target": [0] * 15}), torch.tensor([0.5, 0.5]))


def test_the_binary_head_skips_rows_without_a_label():
    """F.one_hot refused the -100 that transformers uses for "no label" (the other heads ignore such rows)."""
    logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0], [1.0, 2.0]])
    labels = torch.tensor([0, 1, -100])
    torch.testing.assert_close(conditional_loss("binary", logits, labels),
                               conditional_loss("binary", logits[:2], labels[:2]))
    torch.testing.assert_close(conditional_loss("categorical", logits, labels),
                               conditional_loss("categorical", logits[:2], labels[:2]))
    none = conditional_loss("binary", logits.requires_grad_(), torch.full((3,), -100))
    none.backward()
    assert none.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_auxiliary_steps_under_fp16_are_plain_adam_steps(tiny_bert_dir, tmp_path):
    """Under fp16 accelerate wraps every prepared optimizer with the loss scaler: the discriminator's gradients
    (of a loss that was never scaled) were divided by the scale, 65536 at first, and each auxiliary step advanced
    the scaler once more. Simulated on CPU with the scaler fp16 on CUDA sets up."""
    import copy

    trainer = _trainer(tiny_bert_dir, tmp_path, cached=True)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    trainer.create_optimizer()
    discriminator = trainer.objective.discriminator
    reference = copy.deepcopy(discriminator)
    plain = torch.optim.Adam(reference.parameters(), lr=trainer.objective.config.discriminator_lr, betas=(0.5, 0.999))
    real = torch.eye(2)[torch.tensor([0, 1, 0, 1])]
    fake = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.5, 0.5], [0.9, 0.1]])
    trainer.step_auxiliary("discriminator", discriminator.loss(real, fake))
    plain.zero_grad()
    reference.loss(real, fake).backward()
    plain.step()
    for ours, theirs in zip(discriminator.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs)
    assert trainer.accelerator.scaler.get_scale() == 2.0**16


def test_under_gradient_accumulation_the_alternating_steps_see_every_micro_batch(tiny_bert_dir, tmp_path):
    """The discriminator and critics stepped on the last micro-batch's inputs only: with 2 accumulation steps they
    saw half of what the projector's step was trained against."""
    trainer = _trainer(tiny_bert_dir, tmp_path, gradient_accumulation_steps=2, per_device_train_batch_size=8)
    objective = trainer.objective
    seen: dict[str, list[int]] = {"discriminator": [], "critics": []}
    step = objective.on_optimizer_step
    disc_loss, critic_loss = objective.discriminator.loss, objective.critics.loss

    def spy(name, loss):
        def wrapped(a, b):
            if in_step:  # the alternating step's loss (compute_loss also calls the critics for the projector's term)
                seen[name].append(len(b) if name == "discriminator" else len(a))
            return loss(a, b)
        return wrapped

    def on_optimizer_step(trainer, model):
        nonlocal in_step
        in_step = True
        try:
            step(trainer, model)
        finally:
            in_step = False

    in_step = False
    objective.discriminator.loss, objective.critics.loss = spy("discriminator", disc_loss), spy("critics", critic_loss)
    objective.on_optimizer_step = on_optimizer_step
    trainer.train()
    assert trainer.state.global_step >= 2
    # per optimizer step: 2 micro-batches x 8 unlabelled rows; critics: 2 x (8 labelled + 8 unlabelled)
    assert seen["discriminator"] == [16] * trainer.state.global_step
    assert seen["critics"] == [32] * trainer.state.global_step
