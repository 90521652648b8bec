"""SMAT meta-training as a :class:`~hf_lowdata.training.TrainingObjective` of the LowDataTrainer.

One micro-batch is one episode (support set S, query set Q) from an
:class:`~hf_lowdata.training.episodes.EpisodeDataset`; ``gradient_accumulation_steps`` episodes make
a meta-batch (4 in the paper). Per episode [code: authors' ``sparse_interpolated_experts.py``]:

1. router on the class prototypes of S under the *frozen* backbone -> expert weights ``w``
   (relaxed-Bernoulli sample at temperature T, annealed 5 -> 0.5);
2. ``theta = W0 + (sum_m w_m z_m) d`` with the hard-concrete masks at ``beta = 2/3``;
3. one first-order inner SGD step (lr 1e-3) on the support cross-entropy of the cosine ProtoNet head
   ``10 cos(f(x), c_k)``, the prototypes ``c_k`` taking part in the step and keeping their gradient
   path (ProtoMAML-style re-attachment, as in the authors' code);
4. query cross-entropy with the adapted weights;
5. teachers: the adapted weights after one more SGD step (lr 5e-3) on the query cross-entropy (the
   dense teacher), and the pretrained backbone's ProtoNet; reverse KL at T = 2 to each, weight 0.25;
6. ``1e-4 mean(l^2)`` on the router logits; the sparsity Lagrangian acts after each optimizer step
   (below).

Optimisers (one :class:`GroupedOptimizer`, stepped by the Trainer, per-group clipping): SGD with
momentum 0.9 and weight decay 1e-4 for the deltas (``TrainingArguments.learning_rate``), AdamW
(1e-4, wd 1e-2, clip 1) for the router; Trainer's scheduler (cosine with warm-up in the paper)
scales them. Mask logits and the Lagrange multipliers are handled as below.

Deviations, for a meta-training budget of a few hundred steps on CPU instead of ~25k GPU steps (the
paper's rule, tried first on a toy run: additive multipliers at lr 2e-3 never reach the target in
such a budget; faster multipliers with SGD at lr 1e6 switch all masks off within two steps,
because the sparsity gradient is nearly the same for every entry and a zeroed entry gets no task
gradient again):

* [deviation] decoupled sparsity step. The mask logits take Adam steps on the task loss only, at a
  constant rate ``mask_lr`` (default ``8 / max_steps``: a logit can cross the hard-concrete range
  within the run), and after each step the Lagrangian's sparsity term is applied separately, like
  AdamW's decoupled weight decay: ``log_alpha_m -= lambda_m * mask_lr * w_m * 4 sigmoid'(log_alpha_m
  + shift)`` (the expected-L0 gradient, normalised to 1 at its peak; ``w_m`` the expert's mean
  routing weight in the meta-batch, times M). The multiplier ``lambda_m`` is thus in units of the
  mask step: an entry survives when its Adam-normalised task gradient consistently outweighs it.
* [deviation] ascent on the multipliers for the equivalent constraint ``log(density_m) <=
  log(1 - tau_t)``, with the measured density (fraction of entries non-zero at the meta-training
  temperature, as the authors' multiplier update uses): ``lambda_m += multiplier_lr * (log density_m
  - log(1 - tau_t))``, kept in ``[0, max_multiplier]``. The log makes the multiplier fall as fast
  as it rises, so an overshoot is undone.
* [deviation] the masks' clamp to [0, 1] passes gradients straight through (see the layer), so an
  entry switched off can come back when its task gradient asks for it.
* [deviation] the sparsity target ramps linearly from 0 to ``target_sparsity`` between 10% and 60%
  of meta-training (the authors' slowly rising multiplier is an implicit ramp): masks are pruned
  once the deltas carry task signal.
* The sparsity term no longer reaches the router (the authors' router also received its gradient).
* [recon] the router temperature anneals linearly over the first half of meta-training (the authors
  anneal over their first 18k tasks).
* the dense teacher reuses the student's query pass for its gradient (one forward fewer; the
  authors redo it with a fresh dropout mask).
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ...training.episodes import EpisodeDataset
from ...training.objectives import TrainingObjective
from .config import SparseExpertConfig
from .model import SparseExpertModel, class_prototypes, cosine_logits, feature_backbone, pooled_features
from .router import ROUTER_NET, expert_weights

if TYPE_CHECKING:
    from ...training.trainer import LowDataTrainer


class GroupedOptimizer(torch.optim.Optimizer):
    """SGD (momentum, L2 weight decay) or AdamW per parameter group, each group with its own
    gradient-norm clip (``max_grad_norm``) and optional ``maximize`` (gradient ascent).

    One optimizer object, so the Trainer steps, schedules and checkpoints every group together.
    """

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        defaults = dict(algorithm="sgd", lr=1e-3, momentum=0.0, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                        max_grad_norm=0.0, maximize=False, fixed_lr=None, name="")
        for group in groups:
            if group.get("algorithm", "sgd") not in ("sgd", "adamw"):
                raise ValueError(f"Unknown algorithm {group['algorithm']!r} (use 'sgd' or 'adamw').")
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["max_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(params, group["max_grad_norm"])
            for p in params:
                grad = -p.grad if group["maximize"] else p.grad
                if group["algorithm"] == "sgd":
                    self._sgd(p, grad, group)
                else:
                    self._adamw(p, grad, group)
        return loss

    @staticmethod
    def _lr(group: dict[str, Any]) -> float:
        # Groups with a ``fixed_lr`` ignore the learning-rate schedule (the multipliers' controller).
        return group["fixed_lr"] if group.get("fixed_lr") is not None else group["lr"]

    def _sgd(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        if group["weight_decay"]:
            grad = grad.add(p, alpha=group["weight_decay"])
        if group["momentum"]:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.clone()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
            grad = state["momentum_buffer"]
        p.add_(grad, alpha=-self._lr(group))

    def _adamw(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        lr = self._lr(group)
        p.mul_(1 - lr * group["weight_decay"])
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**step))


def reverse_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``0.5 T^2 KL(student || teacher)`` on temperature-softened logits (the authors' distillation term)."""
    return 0.5 * temperature**2 * F.kl_div(
        F.log_softmax(teacher.detach() / temperature, dim=-1),
        F.log_softmax(student / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )


def _ramp(progress: float, start: float, end: float) -> float:
    if end <= start:
        return 1.0 if progress >= start else 0.0
    return min(1.0, max(0.0, (progress - start) / (end - start)))


class SparseExpertObjective(TrainingObjective):
    """Episodic meta-training of a SparseExpert adapter (SMAT); see the module docstring.

    Args:
        inner_lr: learning rate of the first-order inner step on the support set (1e-3).
        teacher_lr: learning rate of the dense teacher's step on the query set (5e-3).
        distill_weight: weight of the distillation term; the query cross-entropy gets 1 - weight (0.25).
        distill_temperature: softmax temperature of the distillation (2).
        router_temperature: (start, end) temperature of the router, annealed linearly (5, 0.5).
        anneal_fraction: fraction of meta-training over which the router temperature anneals (0.5).
        router_logit_penalty: weight of ``mean(l^2)`` on the router logits (1e-4).
        delta_momentum / delta_weight_decay: SGD settings of the dense deltas (0.9, 1e-4); their
            learning rate is ``TrainingArguments.learning_rate``.
        mask_lr: constant Adam step of the mask logits (``None``: ``8 / max_steps``, within [0.01, 0.5]).
        multiplier_lr: ascent step of the multipliers per unit of log-density excess (0.5).
        max_multiplier: upper bound of the multipliers, in units of the mask step (2).
        sparsity_ramp: (start, end) fractions of meta-training over which the sparsity target rises
            from 0 to the config's ``target_sparsity`` (0.1, 0.6).
        router_lr / router_weight_decay / router_max_grad_norm: AdamW settings of the router
            (1e-4, 1e-2, 1).
        learn_masks: False fixes every mask at one and trains the deltas and router only: dense
            meta-tuning, the ablation the paper compares with (PMF).
        binary_masks_from: fraction of meta-training from which the forward pass uses the binary masks
            meta-testing will use (straight-through gradients to the logits), so the deltas end trained
            for the masks they are deployed with [deviation: the authors' masks are binary within a step
            anyway; ours stay soft, mean 0.19 over the surviving entries on MiniLM]. 1 (default): never.
        adapter_name: the adapter to meta-train (default: the active one).
    """

    name = "sparse_expert"
    takes_class_weights = False  # (prototype logits of episodes: every class counts alike by construction)
    uses_wrapped_forward = False  # calls projector/backbone pieces directly: the trainer syncs gradients

    def __init__(
        self,
        inner_lr: float = 1e-3,
        teacher_lr: float = 5e-3,
        distill_weight: float = 0.25,
        distill_temperature: float = 2.0,
        router_temperature: tuple[float, float] = (5.0, 0.5),
        anneal_fraction: float = 0.5,
        router_logit_penalty: float = 1e-4,
        delta_momentum: float = 0.9,
        delta_weight_decay: float = 1e-4,
        mask_lr: float | None = None,
        multiplier_lr: float = 0.5,
        max_multiplier: float = 2.0,
        sparsity_ramp: tuple[float, float] = (0.1, 0.6),
        router_lr: float = 1e-4,
        router_weight_decay: float = 1e-2,
        router_max_grad_norm: float = 1.0,
        learn_masks: bool = True,
        binary_masks_from: float = 1.0,
        adapter_name: str | None = None,
    ) -> None:
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight}.")
        if min(router_temperature) <= 0 or distill_temperature <= 0:
            raise ValueError("router_temperature and distill_temperature must be positive.")
        if mask_lr is not None and mask_lr <= 0:
            raise ValueError(f"mask_lr must be positive, got {mask_lr}.")
        if not 0.0 <= sparsity_ramp[0] <= sparsity_ramp[1] <= 1.0:
            raise ValueError(f"sparsity_ramp must be (start, end) fractions with 0 <= start <= end <= 1, got {sparsity_ramp}.")
        self.inner_lr = inner_lr
        self.teacher_lr = teacher_lr
        self.distill_weight = distill_weight
        self.distill_temperature = distill_temperature
        self.router_temperature = router_temperature
        self.anneal_fraction = anneal_fraction
        self.router_logit_penalty = router_logit_penalty
        self.delta_momentum = delta_momentum
        self.delta_weight_decay = delta_weight_decay
        self.mask_lr = mask_lr
        self.multiplier_lr = multiplier_lr
        self.max_multiplier = max_multiplier
        self.sparsity_ramp = sparsity_ramp
        self.router_lr = router_lr
        self.router_weight_decay = router_weight_decay
        self.router_max_grad_norm = router_max_grad_norm
        if not 0.0 <= binary_masks_from <= 1.0:
            raise ValueError(f"binary_masks_from must be a fraction in [0, 1], got {binary_masks_from}.")
        self.learn_masks = learn_masks
        self.binary_masks_from = binary_masks_from
        self.adapter_name = adapter_name
        self.history: list[dict[str, Any]] = []

    # ---- setup ----------------------------------------------------------------------------------
    def setup(self, trainer: LowDataTrainer) -> None:
        tuner = getattr(trainer.model, "base_model", None)
        if not isinstance(tuner, SparseExpertModel):
            raise TypeError(
                "SparseExpertObjective meta-trains a SparseExpert adapter: pass get_peft_model(model, "
                "SparseExpertConfig(...)) as the trainer's model."
            )
        self.adapter = self.adapter_name or tuner.active_adapters[0]
        self.config: SparseExpertConfig = tuner.peft_config[self.adapter]
        if self.config.masks != "relaxed":
            raise ValueError(
                f"Adapter {self.adapter!r} holds binary masks, which cannot be meta-trained; create it with "
                "masks='relaxed' (the default)."
            )
        if not isinstance(trainer.train_dataset, EpisodeDataset):
            raise TypeError(
                "SparseExpert meta-training reads episodes: pass train_dataset=EpisodeDataset(sources, ...) "
                "(hf_lowdata.training.episodes) to the trainer, with gradient_accumulation_steps episodes per "
                f"meta-batch; got {type(trainer.train_dataset).__name__}."
            )
        inner = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        if trainer.args.gradient_checkpointing or getattr(inner, "is_activation_checkpointing", False):
            raise ValueError(
                "SparseExpert meta-training cannot run with gradient checkpointing: its episodes call the backbone "
                "with per-task weights (torch.func.functional_call), which a checkpointed layer would recompute "
                "with the pretrained ones. Pass gradient_checkpointing=False (and call "
                "model.gradient_checkpointing_disable() if you enabled it on the model)."
            )
        # Clipping is per parameter group (spec); Trainer's global clip would mix the groups.
        # (on the trainer's own copy of the arguments: the caller's object may configure another Trainer later)
        trainer.args = copy.copy(trainer.args)
        trainer.args.max_grad_norm = 0.0
        if not self.learn_masks:
            with torch.no_grad():
                for _, layer in tuner.expert_layers():
                    logits = layer.sparse_expert_logits[self.adapter]
                    logits.fill_(self.config.mask_logit_bound).requires_grad_(False)
        device = next(p.device for p in tuner.parameters())
        self.multipliers = torch.zeros(self.config.num_experts, device=device)
        self._routing = torch.zeros(self.config.num_experts, device=device)
        self._features: dict[tuple[int, int], torch.Tensor] = {}
        self._stats: list[dict[str, float]] = []

    def train_dataloader(self, trainer: LowDataTrainer) -> DataLoader:
        # Each item is one episode; the LowDataTrainer gives such a loader the batch sampler resuming needs.
        return DataLoader(trainer.train_dataset, batch_size=None, shuffle=False)

    def eval_dataloader(self, trainer: LowDataTrainer, dataset: Any) -> DataLoader:
        """Held-out episodes, one per batch (``evaluate(EpisodeDataset(...))``).

        With several processes the episodes must split evenly: accelerate trims the last gathered batch
        by a count of rows, not of episodes, and would drop query rows of the last episodes.
        """
        world = trainer.accelerator.num_processes
        if world > 1 and len(dataset) % world:
            raise ValueError(
                f"Evaluating {len(dataset)} episodes on {world} processes: the episodes must split evenly, or the "
                f"last episodes' query rows are dropped from the metrics. Use a multiple of {world} episodes "
                "(EpisodeDataset(..., num_episodes=...)) or evaluate in one process."
            )
        return DataLoader(dataset, batch_size=None, shuffle=False)

    def prediction_step(self, trainer, model, inputs, prediction_loss_only):
        """Query loss, query logits (cosine to the support prototypes, ways padded by Trainer) and query
        labels of one held-out episode: routed, no inner step, as at meta-test."""
        with torch.no_grad():
            loss, outputs = self.compute_loss(trainer, model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), outputs["logits"].detach(), inputs["query_labels"]

    # ---- optimizer ------------------------------------------------------------------------------
    def create_optimizer(
        self, trainer: LowDataTrainer, model: nn.Module, param_groups: list[dict[str, Any]]
    ) -> torch.optim.Optimizer:
        delta, masks, router = [], [], []
        suffix = f".{self.adapter}"
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if f"sparse_expert_delta{suffix}" in name:
                delta.append(p)
            elif f"sparse_expert_logits{suffix}" in name:
                masks.append(p)
            elif f"{ROUTER_NET}{suffix}." in name:
                router.append(p)
        if not (delta and router and (masks or not self.learn_masks)):
            raise ValueError(
                f"Adapter {self.adapter!r} has no trainable deltas, masks or router; is it active and trainable "
                "(PeftModel.from_pretrained(..., is_trainable=True))?"
            )
        groups = [
            dict(name="delta", params=delta, lr=trainer.args.learning_rate, momentum=self.delta_momentum,
                 weight_decay=self.delta_weight_decay),
            dict(name="router", params=router, algorithm="adamw", lr=self.router_lr,
                 weight_decay=self.router_weight_decay, max_grad_norm=self.router_max_grad_norm),
        ]
        if masks:
            groups.append(dict(name="masks", params=masks, algorithm="adamw", lr=self._mask_lr(trainer),
                               fixed_lr=self._mask_lr(trainer)))
        return GroupedOptimizer(groups)

    def _mask_lr(self, trainer: LowDataTrainer) -> float:
        if self.mask_lr is not None:
            return self.mask_lr
        # the run's step count (state.max_steps: also set when training by epochs, where args.max_steps is -1)
        return min(0.5, max(0.01, 8.0 / max(1, trainer.state.max_steps or trainer.args.max_steps)))

    # ---- schedules ------------------------------------------------------------------------------
    def progress(self, trainer: LowDataTrainer) -> float:
        """Fraction of meta-training done (derived from the step, so it survives a resume)."""
        total = max(1, trainer.state.max_steps or trainer.args.max_steps)
        return trainer.state.global_step / total

    def router_temperature_at(self, progress: float) -> float:
        start, end = self.router_temperature
        return start + (end - start) * _ramp(progress, 0.0, self.anneal_fraction)

    def target_sparsity_at(self, progress: float) -> float:
        return self.config.target_sparsity * _ramp(progress, *self.sparsity_ramp)

    # ---- the step -------------------------------------------------------------------------------
    def _frozen_features(
        self, tuner: SparseExpertModel, backbone: nn.Module, inputs: dict[str, Any], part: str, memoise: bool = True
    ) -> torch.Tensor:
        """Pretrained-backbone features of the support or query examples, memoised per training example.

        The memo is keyed by (source, example) of the training episodes; held-out episodes
        (``evaluate``/``predict`` on another EpisodeDataset) reuse those numbers for other texts, so
        outside training the features are computed afresh.
        """
        source = int(inputs["source"])
        ids = [int(i) for i in inputs[f"{part}_ids"]]
        if memoise and all((source, i) in self._features for i in ids):
            return torch.stack([self._features[(source, i)] for i in ids])
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad(), tuner.bypass():
                feats = pooled_features(backbone, inputs[part]).detach()
        finally:
            backbone.train(was_training)
        if memoise:
            self._features.update({(source, i): f for i, f in zip(ids, feats)})
        return feats

    def _episode_generator(self, trainer: LowDataTrainer, episode: int) -> torch.Generator:
        digest = hashlib.blake2b(f"router\x1f{trainer.args.seed}\x1f{episode}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "big") % (2**63))

    def compute_loss(
        self,
        trainer: LowDataTrainer,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        step_start: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        peft_model = trainer.accelerator.unwrap_model(model)
        tuner: SparseExpertModel = peft_model.base_model
        # (frozen BatchNorm layers run in eval mode: LowDataTrainer.train applies frozen_batchnorm_in_eval)
        backbone = feature_backbone(peft_model)
        y_s, y_q = inputs["support_labels"], inputs["query_labels"]
        way = int(y_s.max()) + 1
        frozen_s = self._frozen_features(tuner, backbone, inputs, "support", memoise=model.training)
        frozen_q = self._frozen_features(tuner, backbone, inputs, "query", memoise=model.training)
        frozen_protos = class_prototypes(frozen_s, y_s, way)
        progress = self.progress(trainer)
        if model.training:  # (a function of the step, so a resumed run switches at the same step)
            tuner.use_binary_meta_masks(progress >= self.binary_masks_from, self.adapter)
        temperature = self.router_temperature_at(progress)
        router_logits = tuner.router_logits(frozen_protos, self.adapter)
        generator = self._episode_generator(trainer, int(inputs["episode_index"]))
        weights = expert_weights(router_logits, temperature, sample=model.training, generator=generator)
        # evaluation scores the model meta-training will deploy: binary masks, not the relaxed ones at beta 1
        theta = tuner.task_weights(weights, backbone, self.adapter, meta=model.training, deployed=not model.training)
        names = list(theta)

        with tuner.bypass():
            f_s = pooled_features(backbone, inputs["support"], theta)
            protos = class_prototypes(f_s, y_s, way)
            if not model.training:  # evaluation (Trainer's prediction_step, under no_grad): no inner step
                student = cosine_logits(pooled_features(backbone, inputs["query"], theta), protos)
                loss = F.cross_entropy(student, y_q)
                return (loss, {"logits": student}) if return_outputs else loss
            protos_leaf = protos.detach().requires_grad_(True)
            support_ce = F.cross_entropy(cosine_logits(f_s, protos_leaf), y_s)
            grads = torch.autograd.grad(support_ce, [theta[n] for n in names] + [protos_leaf], retain_graph=True)
            adapted = {n: theta[n] - self.inner_lr * g for n, g in zip(names, grads[:-1])}  # first order
            head = protos_leaf.detach() - self.inner_lr * grads[-1] + (protos - protos.detach())
            student = cosine_logits(pooled_features(backbone, inputs["query"], adapted), head)
            query_ce = F.cross_entropy(student, y_q)
            teacher_grads = torch.autograd.grad(query_ce, [adapted[n] for n in names] + [head], retain_graph=True)
            with torch.no_grad():
                teacher_theta = {n: adapted[n].detach() - self.teacher_lr * g for n, g in zip(names, teacher_grads[:-1])}
                teacher_head = head.detach() - self.teacher_lr * teacher_grads[-1]
                dense_teacher = cosine_logits(pooled_features(backbone, inputs["query"], teacher_theta), teacher_head)
        pretrained_teacher = cosine_logits(frozen_q, frozen_protos)
        distill = reverse_kl(student, dense_teacher, self.distill_temperature) + reverse_kl(
            student, pretrained_teacher, self.distill_temperature
        )

        loss = (
            (1.0 - self.distill_weight) * query_ce
            + self.distill_weight * distill
            + self.router_logit_penalty * router_logits.pow(2).mean()
        )
        self._routing += weights.detach()
        self._stats.append({
            "support_ce": support_ce.item(), "query_ce": query_ce.item(), "distill": distill.item(),
            "query_accuracy": (student.argmax(-1) == y_q).float().mean().item(),
        })
        return (loss, {"logits": student}) if return_outputs else loss

    def complete_gradients(self, trainer: LowDataTrainer, model: nn.Module) -> None:
        """The mask logits' gradient of the meta-batch, formed in one product (before it is averaged over
        processes)."""
        trainer.accelerator.unwrap_model(model).base_model.finalize_mask_gradients(self.adapter)

    def on_optimizer_step(self, trainer: LowDataTrainer, model: nn.Module) -> None:
        """The decoupled sparsity step and the multipliers' ascent (see the module docstring)."""
        tuner: SparseExpertModel = trainer.accelerator.unwrap_model(model).base_model
        if trainer.accelerator.num_processes > 1:  # every process pushes with the routing of all episodes
            import torch.distributed as dist

            dist.all_reduce(self._routing, op=dist.ReduceOp.SUM)
        progress = trainer.state.global_step / max(1, trainer.state.max_steps)
        target_density = 1.0 - self.target_sparsity_at(progress)
        density = (1.0 - tuner.mask_sparsity(self.adapter)).to(self.multipliers.device)
        if self.learn_masks:
            # (the floor stays under the target, so the multipliers can come down for any tau < 1)
            excess = density.clamp(min=min(1e-4, target_density / 2)).log() - math.log(target_density)
            self.multipliers = (self.multipliers + self.multiplier_lr * excess).clamp(0.0, self.max_multiplier)
            routing = self._routing * (self.config.num_experts / self._routing.sum().clamp(min=1e-8))
            tuner.push_mask_logits(self.multipliers * routing * self._mask_lr(trainer), self.adapter)
            tuner.clamp_mask_logits(self.adapter)
        self._routing = torch.zeros_like(self._routing)

        record: dict[str, Any] = {"step": trainer.state.global_step}
        if self._stats:
            for key in self._stats[0]:
                record[key] = sum(s[key] for s in self._stats) / len(self._stats)
        self._stats = []
        record.update(
            sparsity=[round(float(v), 4) for v in 1.0 - density],
            target_sparsity=round(1.0 - target_density, 4),
            multipliers=[round(float(v), 4) for v in self.multipliers],
            router_temperature=self.router_temperature_at(progress),
        )
        self.history.append(record)

    def log_terms(self) -> dict[str, float]:
        """The numbers of the last meta-step's record (losses averaged over its tasks, mean sparsity)."""
        if not self.history:
            return {}
        last = self.history[-1]
        terms = {f"sparse_expert/{k}": float(v) for k, v in last.items()
                 if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if last.get("sparsity"):
            terms["sparse_expert/mean_sparsity"] = sum(last["sparsity"]) / len(last["sparsity"])
        return terms

    # ---- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"multipliers": self.multipliers.detach()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.multipliers = state["multipliers"].to(self.multipliers.device).clone()

    def json_state(self) -> dict[str, Any]:
        """The per-step :attr:`history`, so that a resumed run's history covers every step."""
        return {"history": self.history}

    def load_json_state(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
