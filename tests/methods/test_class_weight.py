"""The backbone-training methods' ``class_weight`` option: balanced loss weights from the labelled set reach the
LowDataTrainer (MixupBLO's in every phase), ``none`` trains on the plain loss, anything else is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hf_lowdata.budgets import Budget
from hf_lowdata.cli import main
from hf_lowdata.data import DatasetSplits, TextDataset, make_few_shot_task
from hf_lowdata.methods import RunContext, get_method
from hf_lowdata.methods.base import MethodConfigError
from tests.cli.outputs import tiny_args, toy_files
from tests.helpers import toy_sentences

FAST = Budget(learning_rate=5e-3, epochs=1, min_steps=2, max_steps=2, batch_size=8)
WEIGHTING_METHODS = ["full", "lora", "ftp", "ftp_lora", "tpgm", "mixup_blo", "mixup_blo_fast", "mixup_blo_joint",
                     "twin_turbo", "twin_turbo_ce", "probe"]


def _uneven_task():
    """6 examples of class 0, 2 of class 1."""
    rows = toy_sentences(60, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool), seed=0, k=6)
    labels = list(task.labelled.labels)
    keep = [i for i, y in enumerate(labels) if y == 0] + [i for i, y in enumerate(labels) if y == 1][:2]
    return replace(task, labelled=task.labelled.subset(keep))


def _ctx(model, tmp_path, **options):
    return RunContext(model=model, seed=0, budget=FAST, work_dir=tmp_path, quiet=True, options=options)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method", WEIGHTING_METHODS)
def test_every_method_that_trains_a_head_on_a_loss_reads_class_weight(method):
    assert "class_weight" in get_method(method).known_options()


@pytest.mark.parametrize(("options", "expected"), [
    ({"class_weight": "balanced"}, [8 / 12, 2.0]), ({"class_weight": "none"}, None), ({}, None),  # (chosen on dev)
])
def test_the_trainer_gets_the_labelled_sets_balanced_weights(options, expected, tiny_bert_dir, tmp_path, monkeypatch):
    import hf_lowdata.training as training

    seen = []

    class Spy(training.LowDataTrainer):
        def __init__(self, *args, class_weights=None, **kwargs):
            seen.append(class_weights)
            raise _Stop

    monkeypatch.setattr(training, "LowDataTrainer", Spy)
    with pytest.raises(_Stop):
        get_method("full").fit(_uneven_task(), _ctx(tiny_bert_dir, tmp_path, **options))
    if expected is None:
        assert seen == [None]
    else:
        torch.testing.assert_close(seen[0], torch.tensor(expected))


def test_mixup_blo_weights_every_phase_and_reads_the_option_before_training(tiny_bert_dir, tmp_path, monkeypatch):
    from hf_lowdata.methods import mixup_blo

    def train(*args, trainer_kwargs, **kwargs):
        raise _Stop(trainer_kwargs["class_weights"])

    monkeypatch.setattr(mixup_blo, "train_mixup_blo", train)
    with pytest.raises(_Stop) as stop:
        get_method("mixup_blo_fast").fit(_uneven_task(), _ctx(tiny_bert_dir, tmp_path, class_weight="balanced"))
    torch.testing.assert_close(stop.value.args[0], torch.tensor([8 / 12, 2.0]))
    with pytest.raises(MethodConfigError, match="mixup_blo_fast: class_weight must be 'balanced' or 'none'"):
        get_method("mixup_blo_fast").fit(_uneven_task(), _ctx(tiny_bert_dir, tmp_path, class_weight="auto"))


@pytest.mark.parametrize("method", ["full", "ftp", "twin_turbo"])
def test_a_bad_class_weight_is_a_method_config_error(method, tiny_bert_dir, tmp_path):
    with pytest.raises(MethodConfigError, match=rf"{method}: class_weight must be 'balanced' or 'none', got 'yes'"):
        get_method(method).fit(_uneven_task(), _ctx(tiny_bert_dir, tmp_path, class_weight="yes"))


@pytest.mark.parametrize("setting", ["class_weight=balanced", "class_weight=none"])
def test_train_with_class_weight_runs_and_records_the_setting(setting, tiny_bert_dir, tmp_path):
    files = toy_files(tmp_path / "data")
    out = tmp_path / "out"
    args = ["train", "--method", "lora", "--model", str(tiny_bert_dir), "--data", str(files["train"]),
            "--out", str(out), "--config", *tiny_args("lora"), setting]
    assert main(args) == 0
    assert f"| option `class_weight` | `{setting.split('=')[1]}` |" in (out / "README.md").read_text()  # model card


def test_a_balanced_labelled_set_trains_on_the_models_own_loss(tiny_bert_dir, tmp_path):
    """Every balanced weight is 1 there: no weights at all, so k-shot runs train exactly as before."""
    task = _uneven_task()
    labels = list(task.labelled.labels)
    even = task.labelled.subset([i for i, y in enumerate(labels) if y == 0][:2] + [i for i, y in enumerate(labels) if y == 1])
    method = get_method("lora")
    ctx = _ctx(tiny_bert_dir, tmp_path, class_weight="balanced")
    assert method.class_weights(replace(task, labelled=even), ctx) is None
    torch.testing.assert_close(method.class_weights(task, ctx), torch.tensor([8 / 12, 2.0]))


@pytest.mark.parametrize("method", ["full", "twin_turbo_ce"])
def test_a_weighted_fit_trains_and_records_its_weights(method, tiny_bert_dir, tmp_path, monkeypatch):
    from hf_lowdata.training import LowDataTrainer

    used = []
    model_loss = LowDataTrainer.model_loss
    monkeypatch.setattr(LowDataTrainer, "model_loss", lambda self, *a, **k: used.append(self.class_weights) or
                        model_loss(self, *a, **k))
    from hf_lowdata.tuners.twin_turbo import objectives

    conditional = objectives.conditional_loss
    monkeypatch.setattr(objectives, "conditional_loss", lambda *a: used.append(a[4]) or conditional(*a))
    fitted = get_method(method).fit(_uneven_task(), _ctx(tiny_bert_dir, tmp_path, class_weight="balanced"))
    assert fitted.notes["class_weights"] == [0.6667, 2.0]
    assert used and all(torch.equal(w, torch.tensor([8 / 12, 2.0])) for w in used)  # every training loss weighted
    assert len(fitted.predict(["a new text"])) == 1
    used.clear()
    unweighted = get_method(method).fit(_uneven_task(), _ctx(tiny_bert_dir, tmp_path / "none"))  # the default
    assert "class_weights" not in unweighted.notes and used and all(w is None for w in used)


@pytest.mark.parametrize("method", ["twin_turbo_ce", "twin_turbo_notask", "mixup_blo_fast", "full"])
def test_variants_read_class_weight_under_their_methods_budget(method, tmp_path):
    """Without a run budget the option is looked up in the method's budget: twin_turbo_ce has none of its own (it
    trains with twin_turbo's), so a run of it failed with "No budget for method 'twin_turbo_ce'"."""
    assert get_method(method).class_weights(_uneven_task(), RunContext(seed=0, work_dir=tmp_path)) is None
    ctx = RunContext(seed=0, work_dir=tmp_path, options={"class_weight": "x"})
    with pytest.raises(MethodConfigError, match=f"{method}: class_weight must be"):
        get_method(method).class_weights(_uneven_task(), ctx)
