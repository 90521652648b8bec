"""TwinTurbo's training objective: two mutual-information lower bounds on labelled + unlabelled data.

The paper (arXiv:2503.07851) has no public code; every formula below is the reconstruction in
``shared/specs/methods.md`` section 1 ([recon]), with q(y|x) the model's class probabilities,
q(y) = E_x q(y|x) their batch mean and p(y) the label prior.

Task space, I(X;Y) = -H(Y|X) + H_{q,p}(Y) - KL(q(y) || p(y)):

* ``L_cond`` on labelled pairs (the head variant's loss: softmax CE, one-vs-rest BCE, or InfoNCE
  against class embeddings, which is the softmax CE of cosine logits);
* ``L_marg = -sum_k p(k) log qbar_k`` on unlabelled batches (anti-collapse, class balance);
* ``L_adv``: a discriminator on the label simplex learns to tell one-hot labels drawn from p(y)
  (real) from predictions on unlabelled data (fake), in alternating steps with its own Adam
  (lr 1e-4, betas (0.5, 0.999)); the projector minimises the non-saturating loss
  ``-log sigmoid(D(q(.|x_u)))``, a density-ratio estimate of the KL term.

Latent space, a contrastive bound on I(X;Z*): ``u = MLP_u(z*)``, ``v = Linear_v(mean-pooled frozen
backbone state)``; ``L_nce`` = symmetric InfoNCE between u_i and v_i over the batch (labelled and
unlabelled, tau_c = 0.1) and ``L_align = mean ||norm(u_i) - norm(v_i)||^2``. The critics are
training-only and stepped by their own optimizer after each projector step.

Total: ``L = L_cond + b_m L_marg + b_adv L_adv + b_z (L_nce + L_align)``. Without an unlabelled
pool the unlabelled terms use the labelled batch; with every weight 0 the objective is plain
cross-entropy on the same projector (the baseline of the paper's comparison).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from ...training.class_weights import weighted_cross_entropy
from ...training.objectives import AuxiliaryOptimizer, TrainingObjective, dataset_labels
from .config import TwinTurboConfig
from .layer import MASK_KEY, TOKENS_KEY, masked_mean
from .model import backbone_token_states, twin_turbo_layer

if TYPE_CHECKING:
    from ...training.trainer import LowDataTrainer

# ---- the loss terms ---------------------------------------------------------------------------------
def conditional_loss(kind: str, logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0,
                     class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_cond: one-vs-rest BCE for the "binary" head, softmax cross-entropy otherwise; ``smoothing`` is
    Trainer's ``label_smoothing_factor`` (targets (1 - s) one-hot + s / K, as Trainer smooths). Rows labelled
    -100 ("no label", as transformers marks them) count in neither. ``class_weights`` (the trainer's, for uneven
    classes; not in the paper) weight each row's loss by its class, averaged over the rows."""
    if kind == "binary":
        k = logits.shape[-1]
        labelled = labels >= 0
        if not bool(labelled.any()):
            return logits.sum() * 0.0  # (cross-entropy's mean over no row would be NaN)
        logits, labels = logits[labelled], labels[labelled]
        target = F.one_hot(labels, k).to(logits.dtype) * (1.0 - smoothing) + smoothing / k
        if class_weights is None:
            return F.binary_cross_entropy_with_logits(logits, target)
        rows = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(-1)
        return (class_weights.to(rows.device, rows.dtype)[labels] * rows).mean()
    if class_weights is not None:
        return weighted_cross_entropy(logits, labels, class_weights, smoothing)
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)


def marginal_cross_entropy(probs: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """L_marg = -sum_k p(k) log qbar_k, qbar the batch-mean prediction; smallest when qbar = p."""
    qbar = probs.mean(0).clamp(min=1e-8)
    return -(prior.to(device=probs.device, dtype=probs.dtype) * qbar.log()).sum()


def info_nce(u: torch.Tensor, v: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: u_i must pick v_i (and v_i pick u_i) among the batch."""
    logits = F.normalize(u, dim=-1) @ F.normalize(v, dim=-1).t() / temperature
    target = torch.arange(len(u), device=u.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def alignment(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """L_align = mean ||norm(u_i) - norm(v_i)||^2."""
    return (F.normalize(u, dim=-1) - F.normalize(v, dim=-1)).pow(2).sum(-1).mean()


class LabelDiscriminator(nn.Module):
    """D_y: MLP(K -> hidden -> 1) on the label simplex (training only, never saved with the adapter)."""

    def __init__(self, num_labels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_labels, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, simplex: torch.Tensor) -> torch.Tensor:
        # its own dtype (fp32) whatever the adapter's: a bf16/fp16 adapter's predictions reach it too
        return self.net(simplex.to(self.net[0].weight.dtype)).squeeze(-1)

    def loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Its own loss: one-hot labels are real (1), predictions are fake (0)."""
        real_logit, fake_logit = self(real), self(fake)
        return 0.5 * (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
                      + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """The projector's non-saturating loss -log sigmoid(D(q)) (gradients flow into ``fake``)."""
        return F.softplus(-self(fake)).mean()


class LatentCritics(nn.Module):
    """u = MLP_u(z*) and v = Linear_v(pooled frozen state), and the latent bound between them."""

    def __init__(self, projector_dim: int, token_dim: int, critic_dim: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.u = nn.Sequential(nn.Linear(projector_dim, projector_dim), nn.GELU(), nn.Linear(projector_dim, critic_dim))
        self.v = nn.Linear(token_dim, critic_dim)

    def loss(self, z: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """L_nce + L_align between the projector outputs ``z`` and the frozen pooled states."""
        dtype = self.v.weight.dtype  # the critics' own (fp32), whatever the adapter's and the backbone's
        u, v = self.u(z.to(dtype)), self.v(pooled.to(dtype))
        return info_nce(u, v, self.temperature) + alignment(u, v)


def one_hot_samples(prior: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` one-hot labels drawn from ``prior`` (the discriminator's real examples)."""
    labels = torch.multinomial(prior.cpu(), n, replacement=True, generator=generator)
    return F.one_hot(labels, len(prior)).float()


def label_prior(kind: str, labels: list[int] | None, num_labels: int) -> torch.Tensor:
    """p(y): labelled class frequencies (with every class at least one count) or uniform."""
    if kind == "uniform" or not labels:
        return torch.full((num_labels,), 1.0 / num_labels)
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_labels).float()
    counts = counts[:num_labels].clamp(min=1.0)
    return counts / counts.sum()


def classify_and_count(labelled: torch.Tensor, labels: list[int], unlabelled: torch.Tensor, num_labels: int,
                       floor: float = 0.01) -> torch.Tensor:
    """p(y) of an unlabelled pool: the share of it a linear probe assigns to each class (classify and count).

    The probe is logistic regression (C = 1, classes weighted to count alike, so the labelled set's own
    class balance does not tilt it) on the L2-normalised mean-pooled states of the labelled examples.
    Each class keeps at least ``floor`` (the marginal term takes the prior's log; a class the probe
    never predicts may still be there). Not in the paper: the task-space bound needs p(y), and a k-shot
    labelled set is balanced by construction, so its frequencies say nothing about the pool's. EM on
    the probe's probabilities (Saerens et al. 2002) was tried first and ran off to a corner (0.99 of
    the pool in one class) from 24 labelled examples; counting hard predictions did not.
    """
    from sklearn.linear_model import LogisticRegression

    if len(set(labels)) < 2:  # nothing to tell apart: the labelled frequencies
        return label_prior("labelled", labels, num_labels)
    features = [F.normalize(x.float(), dim=-1).cpu().numpy() for x in (labelled, unlabelled)]
    probe = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(features[0], labels)
    counts = torch.bincount(torch.as_tensor(probe.predict(features[1]), dtype=torch.long), minlength=num_labels)
    prior = (counts[:num_labels].float() / max(len(unlabelled), 1)).clamp(min=floor)
    return prior / prior.sum()


#: Item keys :meth:`TwinTurboObjective.pooled_states` passes to the collator (the model's inputs, no text or label).
_INPUT_KEYS = (TOKENS_KEY, "input_ids", "attention_mask", "token_type_ids", "pixel_values")


# ---- the objective ----------------------------------------------------------------------------------
class TwinTurboObjective(TrainingObjective):
    """Trains a TwinTurbo adapter with the task- and latent-space bounds (or CE only, all weights 0).

    Batches carry either the backbone's inputs (``input_ids``/``attention_mask`` or
    ``pixel_values``; the frozen backbone then runs in eval mode each step) or cached token states
    (``token_states``/``token_mask`` from :mod:`hf_lowdata.features`), which skips the backbone.
    The discriminator and the critics are seeded from the run's seed, updated after each
    projector step, and saved in checkpoints (never in the adapter).
    """

    name = "twin_turbo"
    uses_wrapped_forward = False  # calls projector/backbone pieces directly: the trainer syncs gradients

    def __init__(self, config: TwinTurboConfig | None = None) -> None:
        self.config = config
        self.discriminator: LabelDiscriminator | None = None
        self.critics: LatentCritics | None = None
        self.prior = torch.ones(1)
        self.has_unlabelled = False
        self.last_terms: dict[str, float] = {}
        # this optimizer step's detached inputs of the alternating steps, one entry per micro-batch
        self._fakes: list[torch.Tensor] = []
        self._latents: list[tuple[torch.Tensor, torch.Tensor]] = []

    def setup(self, trainer: LowDataTrainer) -> None:
        layer = twin_turbo_layer(trainer.model)
        if self.config is None:
            configs = getattr(trainer.model, "peft_config", {})
            self.config = configs.get(layer.active_adapters[0]) if configs else TwinTurboConfig()
        config = self.config
        projector = layer.twin_turbo_projector[layer.active_adapters[0]]
        num_labels = layer.adapter_head().num_labels
        self.has_unlabelled = trainer.unlabeled_dataset is not None
        all_labels = dataset_labels(trainer.train_dataset) or []
        labels = [y for y in all_labels if y >= 0]  # -100: no label
        if config.label_prior != "uniform" and not labels:
            warnings.warn(
                f"TwinTurbo's label_prior={config.label_prior!r} found no labels in train_dataset (no 'labels' / "
                "'label' column): the marginal and adversarial terms use a uniform prior.", UserWarning, stacklevel=2)
        if config.label_prior == "estimated" and labels and self.has_unlabelled and config.reads_label_prior:
            labelled = self.pooled_states(trainer, trainer.model, trainer.train_dataset)
            self.prior = classify_and_count(labelled[torch.as_tensor(all_labels) >= 0], labels,
                                            self.pooled_states(trainer, trainer.model, trainer.unlabeled_dataset),
                                            num_labels)
        else:
            self.prior = label_prior("uniform" if config.label_prior == "uniform" else "labelled", labels, num_labels)
        with torch.random.fork_rng(devices=[]):  # seeded, without shifting the run's random stream
            torch.manual_seed(trainer.args.seed + 7919)
            if config.adversarial_weight > 0:
                self.discriminator = LabelDiscriminator(num_labels, config.discriminator_hidden)
            if config.latent_weight > 0:
                self.critics = LatentCritics(config.projector_dim, projector.input.in_features, config.critic_dim,
                                             config.contrastive_temperature)
        self.to(projector.input.weight.device)

    @torch.no_grad()
    def pooled_states(self, trainer: LowDataTrainer, model: nn.Module, dataset, batch_size: int = 256) -> torch.Tensor:
        """The mean-pooled backbone states of every item of ``dataset``, (N, d) on the CPU: from cached token states
        as they are, else one pass of the frozen backbone (the unlabelled pool's costs what caching it would)."""
        pooled = []
        for start in range(0, len(dataset), batch_size):
            items = [{k: v for k, v in dataset[i].items() if k in _INPUT_KEYS}
                     for i in range(start, min(start + batch_size, len(dataset)))]
            tokens, mask = self.token_states(model, trainer._prepare_inputs(dict(trainer.data_collator(items))))
            pooled.append(masked_mean(tokens.float(), mask).cpu())
        return torch.cat(pooled)

    def to(self, device: torch.device | str) -> TwinTurboObjective:
        """Put the objective's own tensors and modules (prior, discriminator, critics) on ``device``."""
        self.prior = self.prior.to(device)
        for module in self._modules().values():
            module.to(device)
        return self

    def create_auxiliary_optimizers(self, trainer: LowDataTrainer, model: nn.Module) -> dict[str, AuxiliaryOptimizer]:
        assert self.config is not None
        # Training starts: follow the model to wherever it is now (Trainer / accelerate may have moved
        # it since setup()), before the optimizers take the parameters.
        layer = twin_turbo_layer(model)
        self.to(layer.twin_turbo_projector[layer.active_adapters[0]].input.weight.device)
        optimizers = {}
        if self.discriminator is not None:
            optimizers["discriminator"] = AuxiliaryOptimizer(torch.optim.Adam(
                self.discriminator.parameters(), lr=self.config.discriminator_lr, betas=(0.5, 0.999)))
        if self.critics is not None:
            lr = self.config.critic_lr or trainer.args.learning_rate
            optimizers["critics"] = AuxiliaryOptimizer(torch.optim.AdamW(self.critics.parameters(), lr=lr))
        return optimizers

    # ---- one step ---------------------------------------------------------------------------------
    @staticmethod
    def token_states(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached token states of the batch, or the frozen backbone's (run in eval mode, no grad)."""
        if TOKENS_KEY in batch:
            return batch[TOKENS_KEY], batch[MASK_KEY].to(torch.bool)
        layer = twin_turbo_layer(model)
        was_training = model.training
        model.eval()
        try:
            return backbone_token_states(model, batch)
        finally:
            model.train(was_training)
            layer.train(was_training)

    def log_terms(self) -> dict[str, float]:
        """The loss terms of the last training micro-batch (conditional, marginal, adversarial, latent)."""
        return {f"twin_turbo/{k}": v for k, v in self.last_terms.items()}

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None, step_start=False):
        config = self.config
        assert config is not None, "setup() was not called"
        if not model.training and TOKENS_KEY not in inputs:  # evaluation: the model's own forward and loss
            return trainer.model_loss(model, inputs, return_outputs, num_items_in_batch)
        if step_start:  # (what a step that failed half-way left behind is not this step's)
            self._fakes, self._latents = [], []
        layer = twin_turbo_layer(model)
        head = layer.adapter_head()
        tokens, mask = self.token_states(model, inputs)
        z = layer.encode(tokens, mask)
        logits = layer.classify(z)
        labels = inputs.get("labels")
        if labels is None:
            raise ValueError(
                f"TwinTurbo's training batches need labels, but this batch has only {sorted(inputs)}: name the label "
                "column 'labels' or 'label' (transformers' collators pass 'label' on as 'labels')."
            )
        loss = conditional_loss(head.kind, logits, labels, float(trainer.args.label_smoothing_factor or 0.0),
                                trainer.class_weights)
        terms = {"cond": loss.detach()}
        if model.training and config.uses_unlabelled_terms:
            if self.has_unlabelled:
                tokens_u, mask_u = self.token_states(model, trainer.unlabelled_batch())
                z_u = layer.encode(tokens_u, mask_u)
                probs_u = head.probabilities(layer.classify(z_u))
            else:
                tokens_u, mask_u, z_u, probs_u = tokens, mask, z, head.probabilities(logits)
            if config.marginal_weight:
                terms["marginal"] = marginal_cross_entropy(probs_u, self.prior)
                loss = loss + config.marginal_weight * terms["marginal"]
            if self.discriminator is not None:
                terms["adversarial"] = self.discriminator.generator_loss(probs_u)
                loss = loss + config.adversarial_weight * terms["adversarial"]
                self._fakes.append(probs_u.detach())
            if self.critics is not None:
                pooled = masked_mean(tokens, mask).detach()
                if self.has_unlabelled:
                    z_all = torch.cat([z, z_u])
                    pooled = torch.cat([pooled, masked_mean(tokens_u, mask_u).detach()])
                else:
                    z_all = z
                terms["latent"] = self.critics.loss(z_all, pooled)
                loss = loss + config.latent_weight * terms["latent"]
                self._latents.append((z_all.detach(), pooled))
        self.last_terms = {k: float(v.detach()) for k, v in terms.items()}
        if return_outputs:
            return loss, SequenceClassifierOutput(loss=loss, logits=logits)
        return loss

    def on_optimizer_step(self, trainer: LowDataTrainer, model: nn.Module) -> None:
        """The alternating steps: discriminator, then critics, on this step's detached inputs (every
        micro-batch's under gradient accumulation, as the projector's step saw them all)."""
        fakes, latents = self._fakes, self._latents
        self._fakes, self._latents = [], []
        if self.discriminator is not None and fakes:
            fake = torch.cat(fakes)
            generator = torch.Generator().manual_seed(trainer.args.seed * 1_000_003 + trainer.state.global_step)
            real = one_hot_samples(self.prior, len(fake), generator).to(fake.device)
            trainer.step_auxiliary("discriminator", self.discriminator.loss(real, fake))
        if self.critics is not None and latents:
            z_all, pooled = (torch.cat(parts) for parts in zip(*latents))
            trainer.step_auxiliary("critics", self.critics.loss(z_all, pooled))

    # ---- checkpoints ------------------------------------------------------------------------------
    def _modules(self) -> dict[str, nn.Module]:
        return {name: m for name, m in (("discriminator", self.discriminator), ("critics", self.critics))
                if m is not None}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v for name, m in self._modules().items() for k, v in m.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, module in self._modules().items():
            prefix = f"{name}."
            module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
