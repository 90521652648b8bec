"""LowDataTrainer: Trainer parity, objectives, second optimizers, resume, unlabelled data, NaN."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import Trainer

from hf_lowdata.budgets import Budget
from hf_lowdata.data import TextDataset, collator, tokenize
from hf_lowdata.models import load_for_classification, load_tokenizer
from hf_lowdata.training import (
    AuxiliaryOptimizer,
    LowDataTrainer,
    NonFiniteLossError,
    TrainingObjective,
    few_shot_training_args,
    last_complete_checkpoint,
)
from tests.helpers import toy_sentences

BUDGET = Budget(learning_rate=1e-3, epochs=1, min_steps=8, max_steps=8, batch_size=4, warmup_ratio=0.0)


def _data(n=24, seed=0) -> TextDataset:
    rows = toy_sentences(n, seed)
    return TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _make(tiny_bert_dir, tmp_path, objective=None, unlabelled=None, trainer_cls=LowDataTrainer, **arg_overrides):
    tok = load_tokenizer(tiny_bert_dir)
    model = load_for_classification(tiny_bert_dir, 2, ["neg", "pos"], seed=0)
    args = few_shot_training_args(str(tmp_path), BUDGET, 24, seed=0, use_cpu=True, **arg_overrides)
    kwargs = dict(model=model, args=args, train_dataset=tokenize(_data(), tok), data_collator=collator(tok),
                  processing_class=tok)
    if issubclass(trainer_cls, LowDataTrainer):
        kwargs.update(objective=objective, unlabeled_dataset=unlabelled, unlabeled_batch_size=6)
    return trainer_cls(**kwargs)


class CriticObjective(TrainingObjective):
    """A test objective: an extra loss on unlabelled batches through a critic with its own optimizer."""

    name = "critic-test"
    uses_unlabelled = True

    def setup(self, trainer):
        torch.manual_seed(123)
        self.critic = nn.Linear(2, 1)
        self.steps = 0

    def create_auxiliary_optimizers(self, trainer, model):
        opt = torch.optim.Adam(self.critic.parameters(), lr=1e-2)
        return {"critic": AuxiliaryOptimizer(opt, torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5))}

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None, step_start=False):
        loss, outputs = trainer.model_loss(model, inputs, True, num_items_in_batch)
        if model.training:
            probs_u = model(**trainer.unlabelled_batch()).logits.softmax(-1)
            trainer.step_auxiliary("critic", (self.critic(probs_u.detach()) - 1).pow(2).mean())
            loss = loss + 0.1 * self.critic(probs_u).mean()
        return (loss, outputs) if return_outputs else loss

    def on_optimizer_step(self, trainer, model):
        self.steps += 1

    def state_dict(self):
        return {f"critic.{k}": v for k, v in self.critic.state_dict().items()}

    def load_state_dict(self, state):
        self.critic.load_state_dict({k.removeprefix("critic."): v for k, v in state.items()})


def _unlabelled(tok):
    rows = toy_sentences(30, 7)
    return tokenize(TextDataset(tuple(r["text"] for r in rows), None, ("neg", "pos")), tok)


def test_default_objective_matches_plain_trainer(tiny_bert_dir, tmp_path):
    ours = _make(tiny_bert_dir, tmp_path / "a")
    ours.train()
    plain = _make(tiny_bert_dir, tmp_path / "b", trainer_cls=Trainer)
    plain.train()
    a, b = _params(ours.model), _params(plain.model)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    start = _params(load_for_classification(tiny_bert_dir, 2, seed=0))
    assert not torch.equal(start["classifier.weight"], a["classifier.weight"])


def test_resume_equals_uninterrupted_with_auxiliary_optimizer(tiny_bert_dir, tmp_path):
    tok = load_tokenizer(tiny_bert_dir)
    full = _make(tiny_bert_dir, tmp_path / "full", CriticObjective(), _unlabelled(tok), save_strategy="steps", save_steps=4)
    full.train()
    assert full.objective.steps == 8
    checkpoint = tmp_path / "full" / "checkpoint-4"
    assert (checkpoint / "auxiliary_optimizers.pt").is_file()
    assert (checkpoint / "objective_state.safetensors").is_file()

    resumed = _make(tiny_bert_dir, tmp_path / "resumed", CriticObjective(), _unlabelled(tok))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    a, b = _params(full.model), _params(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    for (n, p), q in zip(full.objective.critic.named_parameters(), resumed.objective.critic.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    sa = full.auxiliary_optimizers["critic"]
    sb = resumed.auxiliary_optimizers["critic"]
    assert sa.scheduler.state_dict() == sb.scheduler.state_dict()
    assert sa.optimizer.state_dict()["state"][0]["step"] == sb.optimizer.state_dict()["state"][0]["step"] == 8


@pytest.mark.parametrize(("missing", "message"), [
    ("auxiliary_optimizers.pt", "no auxiliary_optimizers.pt"),
    # it resumed silently with a fresh critic (or discriminator, TPGM radii)
    ("objective_state.safetensors", "no objective_state.safetensors.*not written by the 'critic-test'"),
])
def test_a_checkpoint_without_the_objectives_state_is_refused(tiny_bert_dir, tmp_path, missing, message):
    """The resume checks above can fail: a critic or its optimizer restarted from scratch changes the trajectory."""
    tok = load_tokenizer(tiny_bert_dir)
    full = _make(tiny_bert_dir, tmp_path / "full", CriticObjective(), _unlabelled(tok), save_strategy="steps", save_steps=4)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-4"
    (checkpoint / missing).unlink()
    resumed = _make(tiny_bert_dir, tmp_path / "resumed", CriticObjective(), _unlabelled(tok))
    with pytest.raises(FileNotFoundError, match=message):
        resumed.train(resume_from_checkpoint=str(checkpoint))


def test_unlabelled_batches_are_a_function_of_the_step(tiny_bert_dir, tmp_path):
    tok = load_tokenizer(tiny_bert_dir)
    t1 = _make(tiny_bert_dir, tmp_path / "a", CriticObjective(), _unlabelled(tok))
    t2 = _make(tiny_bert_dir, tmp_path / "b", CriticObjective(), _unlabelled(tok))
    seen = []
    for step in range(10):
        t1.state.global_step = t2.state.global_step = step  # one micro-batch per step: index = step
        b1, b2 = t1.unlabelled_batch(), t2.unlabelled_batch()
        assert torch.equal(b1["input_ids"], b2["input_ids"])
        assert b1["input_ids"].shape[0] == 6
        seen.append(tuple(map(tuple, b1["input_ids"].tolist())))
    first_epoch = [row for batch in seen[:5] for row in batch]  # 30 texts / 6 per batch = 5 steps
    assert len(set(first_epoch)) == 30


def test_a_launcher_with_single_process_arguments_is_a_clear_error(tiny_bert_dir, tmp_path, monkeypatch):
    """torchrun / accelerate launch on a CPU machine with TrainingArguments(use_cpu=False): each process got
    world_size 1 and trained alone, all writing to one output_dir."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine these arguments are distributed")
    from transformers import TrainingArguments

    tok = load_tokenizer(tiny_bert_dir)
    args = TrainingArguments(str(tmp_path), report_to=[])
    assert args.world_size == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="pass use_cpu=True to TrainingArguments"):
        LowDataTrainer(model=load_for_classification(tiny_bert_dir, 2, seed=0), args=args,
                       train_dataset=tokenize(_data(), tok), data_collator=collator(tok))


def test_objective_needing_unlabelled_data_says_so(tiny_bert_dir, tmp_path):
    with pytest.raises(ValueError, match="pass unlabeled_dataset="):
        _make(tiny_bert_dir, tmp_path, CriticObjective(), None)


@pytest.mark.parametrize(("pool", "error", "message"), [
    (["a text", "another"], TypeError, "got list. For a list of texts"),
    ("a text", TypeError, "got str"),
    (5, TypeError, "got int"),
    ("untokenized", ValueError, r"no input_ids column \(columns: \['text'\]\): tokenize it first"),
])
def test_unlabelled_data_of_the_wrong_kind_is_a_clear_error(tiny_bert_dir, tmp_path, pool, error, message):
    if pool == "untokenized":
        import datasets

        pool = datasets.Dataset.from_dict({"text": ["a", "b"]})
    with pytest.raises(error, match=message):  # these failed deep in the collator at the first step
        _make(tiny_bert_dir, tmp_path, CriticObjective(), pool)


def test_excluded_parameters_are_not_updated(tiny_bert_dir, tmp_path):
    class Exclude(TrainingObjective):
        def excluded_parameters(self, model):
            return {id(model.classifier.bias)}

    trainer = _make(tiny_bert_dir, tmp_path, Exclude())
    before = _params(trainer.model)
    trainer.train()
    after = _params(trainer.model)
    assert trainer.model.classifier.bias.requires_grad
    assert torch.equal(before["classifier.bias"], after["classifier.bias"])
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(trainer.model.classifier.bias) not in opt_params


def test_custom_optimizer_is_used(tiny_bert_dir, tmp_path):
    class SGDObjective(TrainingObjective):
        def create_optimizer(self, trainer, model, param_groups):
            return torch.optim.SGD(param_groups, lr=trainer.args.learning_rate)

    trainer = _make(tiny_bert_dir, tmp_path, SGDObjective())
    trainer.train()
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(inner, torch.optim.SGD)


def test_nan_loss_raises_clear_error(tiny_bert_dir, tmp_path):
    class NaNObjective(TrainingObjective):
        name = "nan-test"

        def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None, step_start=False):
            loss = trainer.model_loss(model, inputs, False, num_items_in_batch)
            return loss * float("nan") if trainer.state.global_step == 2 else loss

    trainer = _make(tiny_bert_dir, tmp_path, NaNObjective())
    # the third step (two completed), numbered as Trainer numbers steps
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 \(objective 'nan-test'.*Lower learning_rate"):
        trainer.train()


def test_non_finite_gradients_of_a_finite_loss_stop_before_the_step_and_its_checkpoint(tiny_bert_dir, tmp_path):
    """The loss check alone let such a step through: its poisoned weights were saved as a complete checkpoint,
    the last good one was rotated away, and --resume picked the poisoned one."""
    from hf_lowdata.training import last_complete_checkpoint

    class NaNGradient(TrainingObjective):
        name = "nan-gradient"

        def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None, step_start=False):
            loss = trainer.model_loss(model, inputs, False, num_items_in_batch)
            if trainer.state.global_step == 3:
                weight = next(p for p in model.parameters() if p.requires_grad)
                loss = loss + torch.sqrt(((weight - weight.detach()) ** 2).sum())  # value 0, gradient NaN
            return loss

    trainer = _make(tiny_bert_dir, tmp_path, NaNGradient(), save_strategy="steps", save_steps=2, save_total_limit=1)
    with pytest.raises(NonFiniteLossError, match=r"gradients are not finite at step 4 although the loss is .*not applied"):
        trainer.train()
    last = last_complete_checkpoint(str(tmp_path))
    assert last is not None and last.endswith("checkpoint-2")
    from safetensors.torch import load_file

    weights = load_file(f"{last}/model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


class EpisodeData(Dataset):
    """Deterministic toy 'episodes': each item is a small labelled batch."""

    def __init__(self, tok, n):
        self.tok, self.n = tok, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        rows = toy_sentences(4, 1000 + i)
        enc = self.tok([r["text"] for r in rows], padding=True, return_tensors="pt")
        return {"support": dict(enc), "support_labels": torch.tensor([r["label"] for r in rows])}


class Episodic(TrainingObjective):
    """A test objective whose loader yields ready-made batches (``batch_size=None``), like episodic training."""

    name = "episodic-test"

    def __init__(self, tok):
        self.tok = tok

    def setup(self, trainer):
        self.episodes_seen = 0

    def train_dataloader(self, trainer):
        return DataLoader(EpisodeData(self.tok, 8), batch_size=None, shuffle=False)

    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None, step_start=False):
        self.episodes_seen += 1
        out = model(**inputs["support"], labels=inputs["support_labels"])
        return (out.loss, out) if return_outputs else out.loss


def test_episodic_dataloader_path(tiny_bert_dir, tmp_path):
    trainer = _make(tiny_bert_dir, tmp_path, Episodic(load_tokenizer(tiny_bert_dir)))
    trainer.train()
    assert trainer.objective.episodes_seen == 8 and trainer.state.global_step == 8


def test_episodic_training_resumes_like_uninterrupted(tiny_bert_dir, tmp_path):
    """Resuming skips the episodes already seen (a loader without batch sampler could not)."""
    tok = load_tokenizer(tiny_bert_dir)
    full = _make(tiny_bert_dir, tmp_path / "full", Episodic(tok), save_strategy="steps", save_steps=4)
    full.train()
    resumed = _make(tiny_bert_dir, tmp_path / "resumed", Episodic(tok))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert resumed.objective.episodes_seen == 4 and resumed.state.global_step == 8
    a, b = _params(full.model), _params(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_last_complete_checkpoint_skips_partial_ones(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6, "log_hist')  # killed mid-write
    assert last_complete_checkpoint(tmp_path).endswith("checkpoint-4")
    assert last_complete_checkpoint(tmp_path / "missing") is None


def test_resume_true_without_checkpoint_is_clear(tiny_bert_dir, tmp_path):
    trainer = _make(tiny_bert_dir, tmp_path)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)


def test_peft_model_trains_only_adapter(tiny_bert_dir, tmp_path):
    from peft import LoraConfig, TaskType, get_peft_model

    trainer = _make(tiny_bert_dir, tmp_path)
    trainer.model = trainer.model_wrapped = get_peft_model(trainer.model, LoraConfig(task_type=TaskType.SEQ_CLS))
    before = _params(trainer.model)
    trainer.train()
    after = _params(trainer.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all("lora_" in n or "modules_to_save" in n for n in changed), changed


def test_objective_terms_are_logged_and_a_compute_loss_override_cannot_skip_the_objective(tiny_bert_dir, tmp_path):
    class TermObjective(TrainingObjective):
        name = "term-test"

        def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None,
                         step_start=False):
            loss = trainer.model_loss(model, inputs, return_outputs, num_items_in_batch)
            self.last = float((loss[0] if return_outputs else loss).detach())
            return loss

        def log_terms(self):
            return {"term-test/model_loss": self.last}

    trainer = _make(tiny_bert_dir, tmp_path / "a", TermObjective(), logging_steps=1)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all("term-test/model_loss" in h for h in logged)

    class PlainLoss(LowDataTrainer):  # a user's override that forgets super(): the method would silently be off
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return model(**inputs).loss

    with pytest.raises(RuntimeError, match="does not call LowDataTrainer.compute_loss, so the 'term-test' objective"):
        _make(tiny_bert_dir, tmp_path / "b", TermObjective(), trainer_cls=PlainLoss).train()


def test_gradient_accumulation_averages_micro_batches_like_one_big_batch(tiny_bert_dir, tmp_path):
    """2 micro-batches of 4 = one batch of 8. transformers took BERT's **kwargs for a summed loss and skipped the
    division by the accumulation steps: the update was twice as large (and world_size times larger under DDP)."""
    def one_step(out, batch_size, accumulation):
        trainer = _make(tiny_bert_dir, out, per_device_train_batch_size=batch_size,
                        gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=1.0,
                        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0)
        for module in trainer.model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        before = _params(trainer.model)
        trainer.train()
        after = _params(trainer.model)
        return {n: after[n] - before[n] for n in before}, trainer.state.log_history[0]["loss"]

    accumulated, accumulated_loss = one_step(tmp_path / "a", 4, 2)
    whole, whole_loss = one_step(tmp_path / "b", 8, 1)
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)
    assert accumulated_loss == pytest.approx(whole_loss, rel=1e-4)


def test_auxiliary_optimizer_state_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A kill while saving a checkpoint's auxiliary optimizer state leaves the previous file whole."""
    from hf_lowdata.training.trainer import _atomic_torch_save

    target = str(tmp_path / "aux.pt")
    _atomic_torch_save({"step": torch.tensor(1)}, target)
    real_save = torch.save

    def cut_short(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"PK")  # a few bytes reach the disk, then the process dies
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", cut_short)
    with pytest.raises(OSError, match="killed"):
        _atomic_torch_save({"step": torch.tensor(2)}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert int(torch.load(target, weights_only=True)["step"]) == 1


def test_logged_terms_are_averaged_over_processes_and_non_numbers_pass_through(tiny_bert_dir, tmp_path, monkeypatch):
    """A custom objective's non-numeric log term crashed the averaging under several processes."""
    from types import SimpleNamespace

    class Terms(TrainingObjective):
        def log_terms(self):
            return {"mine/loss": 0.5, "mine/count": 3, "mine/classes": ["a", "b"]}

    trainer = _make(tiny_bert_dir, tmp_path, objective=Terms())
    reduced = []

    def mean_over_two(values, reduction):
        reduced.append(values.tolist())
        return (values + torch.tensor([1.0, 0.5])) / 2  # the other process logged count 1 and loss 0.5

    monkeypatch.setattr(trainer, "accelerator", SimpleNamespace(num_processes=2, device="cpu", reduce=mean_over_two,
                                                                 is_main_process=True))
    monkeypatch.setattr(Trainer, "log", lambda self, logs, *a, **k: seen.append(logs))
    seen: list = []
    trainer.log({"loss": 1.0})
    assert reduced == [[3.0, 0.5]]  # mine/count, mine/loss
    assert seen == [{"loss": 1.0, "mine/loss": 0.5, "mine/count": 2.0, "mine/classes": ["a", "b"]}]


def test_a_weights_only_checkpoint_says_so(tiny_bert_dir, tmp_path):
    tok = load_tokenizer(tiny_bert_dir)
    full = _make(tiny_bert_dir, tmp_path / "full", CriticObjective(), _unlabelled(tok), save_steps=4,
                 save_only_model=True)
    full.train()
    resumed = _make(tiny_bert_dir, tmp_path / "resumed", CriticObjective(), _unlabelled(tok))
    with pytest.raises(FileNotFoundError, match="save_only_model=True"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))


class NanCriticObjective(CriticObjective):
    def compute_loss(self, trainer, model, inputs, return_outputs=False, num_items_in_batch=None, step_start=False):
        if model.training and trainer.state.global_step == 2:
            with torch.no_grad():
                self.critic.weight.fill_(float("nan"))  # the critic's own loss turns NaN at this step
        return super().compute_loss(trainer, model, inputs, return_outputs, num_items_in_batch, step_start)


def test_a_non_finite_auxiliary_loss_stops_before_its_step_and_names_the_optimizer(tiny_bert_dir, tmp_path):
    """step_auxiliary stepped on NaN: the critic in the next checkpoint was NaN, and the error came a step later,
    blaming the training loss."""
    tok = load_tokenizer(tiny_bert_dir)
    trainer = _make(tiny_bert_dir, tmp_path, NanCriticObjective(), _unlabelled(tok), save_steps=2)
    with pytest.raises(NonFiniteLossError, match="'critic' optimizer's loss or gradients are not finite at step 2"):
        trainer.train()
    assert last_complete_checkpoint(str(tmp_path)).endswith("checkpoint-2")


def test_optimizer_cls_and_kwargs_is_used_as_trainer_uses_it(tiny_bert_dir, tmp_path):
    ours = _make(tiny_bert_dir, tmp_path / "a")
    ours.optimizer_cls_and_kwargs = (torch.optim.SGD, {"lr": 0.5, "momentum": 0.9})
    plain = _make(tiny_bert_dir, tmp_path / "b", trainer_cls=Trainer)
    plain.optimizer_cls_and_kwargs = (torch.optim.SGD, {"lr": 0.5, "momentum": 0.9})
    for trainer in (ours, plain):
        optimizer = trainer.create_optimizer()
        assert type(optimizer) is torch.optim.SGD and optimizer.defaults["momentum"] == 0.9


def test_token_classifiers_average_micro_batches_like_one_big_batch(tiny_bert_dir, tmp_path):
    """The accumulation fix covered sequence and image classifiers only: a token classifier (batch-mean loss,
    **kwargs in forward) took updates accumulation-steps times too large."""
    from transformers import AutoModelForTokenClassification

    from hf_lowdata.training.trainer import _sums_its_loss_over_items

    model = AutoModelForTokenClassification.from_pretrained(tiny_bert_dir, num_labels=3)
    assert not _sums_its_loss_over_items(model)
    trainer = LowDataTrainer(model=model, args=few_shot_training_args(str(tmp_path), BUDGET, 8, use_cpu=True))
    assert trainer.model_accepts_loss_kwargs is False


def test_model_init_trains_a_fresh_model_per_run_and_refuses_objectives_bound_to_a_model(tiny_bert_dir, tmp_path):
    """Trainer made model_init's model inside train(), after the BatchNorm freeze had hooked the old model; an
    objective with modules and optimizers of its own kept training against the first model."""
    tok = load_tokenizer(tiny_bert_dir)

    def make(out, objective=None, unlabelled=None):
        args = few_shot_training_args(str(out), BUDGET, 24, seed=0, use_cpu=True)
        return LowDataTrainer(model_init=lambda: load_for_classification(tiny_bert_dir, 2, ["neg", "pos"], seed=0),
                              args=args, train_dataset=tokenize(_data(), tok), data_collator=collator(tok),
                              processing_class=tok, objective=objective, unlabeled_dataset=unlabelled)

    trainer = make(tmp_path / "a")
    trainer.train()
    first = _params(trainer.model)
    trainer.train()  # a second run starts from a fresh model, as with Trainer
    second = _params(trainer.model)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)
    assert trainer.model_init is not None
    with pytest.raises(ValueError, match="'critic-test' objective was set up on the model"):
        make(tmp_path / "b", CriticObjective(), _unlabelled(tok)).train()


def test_training_argument_overrides_work_as_they_read():
    args = few_shot_training_args("out", BUDGET, 24, save_steps=2)
    assert args.save_strategy == "steps" and args.save_steps == 2
    args = few_shot_training_args("out", BUDGET, 24, eval_steps=3)
    assert args.eval_strategy == "steps"
    args = few_shot_training_args("out", BUDGET, 24, num_train_epochs=5)
    assert args.max_steps == -1 and args.num_train_epochs == 5
    args = few_shot_training_args("out", BUDGET, 24, max_steps=100)
    assert args.logging_steps == 20
    args = few_shot_training_args("out", BUDGET, 24, save_steps=2, save_strategy="no")
    assert args.save_strategy == "no"  # an explicit strategy wins


def test_load_best_model_at_end_restores_the_objective_state_of_the_best_checkpoint(tiny_bert_dir, tmp_path):
    from safetensors.torch import load_file

    tok = load_tokenizer(tiny_bert_dir)
    args = few_shot_training_args(str(tmp_path), BUDGET, 24, seed=0, use_cpu=True, save_steps=2, eval_steps=2,
                                  load_best_model_at_end=True, metric_for_best_model="loss")
    trainer = LowDataTrainer(model=load_for_classification(tiny_bert_dir, 2, ["neg", "pos"], seed=0), args=args,
                             train_dataset=tokenize(_data(), tok), eval_dataset=tokenize(_data(8, 3), tok),
                             data_collator=collator(tok), processing_class=tok, objective=CriticObjective(),
                             unlabeled_dataset=_unlabelled(tok), unlabeled_batch_size=6)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and not best.endswith("checkpoint-8")  # (otherwise the last state is the best one)
    saved = load_file(f"{best}/objective_state.safetensors")
    for name, value in trainer.objective.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=name)
