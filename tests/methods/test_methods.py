"""Method registry and the baselines (probe, full, lora, setfit) on tiny and real models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from hf_lowdata.budgets import BUDGETS, MIN_EPOCHS, Budget, get_budget
from hf_lowdata.data import DatasetSplits, TextDataset, make_few_shot_task
from hf_lowdata.methods import RunContext, SharedCache, available_methods, get_method
from hf_lowdata.methods.base import MethodConfigError
from tests.helpers import toy_sentences

FAST = Budget(learning_rate=5e-3, epochs=1, min_steps=6, max_steps=6, batch_size=8)


def _task(k=8):
    rows = toy_sentences(120, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    test_rows = toy_sentences(40, 99)
    test = TextDataset(tuple(r["text"] for r in test_rows), tuple(r["label"] for r in test_rows), ("neg", "pos"), "toy-test")
    return make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool, test=test), seed=0, k=k)


def test_registry_lists_baselines_and_rejects_unknown():
    assert {"probe", "full", "lora", "setfit"} <= set(available_methods())
    with pytest.raises(KeyError, match=r"Unknown method 'nope'. Available methods: .*full.*lora.*probe"):
        get_method("nope")


def test_methods_need_no_settings_by_default(monkeypatch):
    from hf_lowdata.methods import METHODS, Method

    assert Method.missing_requirements() is None and Method.missing_requirements({"r": 4}) is None
    monkeypatch.delenv("HF_LOWDATA_DATA_DIR", raising=False)
    for name in ("probe", "full", "lora", "sparse_expert_pretrained"):
        assert METHODS[name].missing_requirements({}) is None, name
    get_method("sparse_expert")  # informational only: get_method (the benchmark's path) still builds it


def test_budget_steps_are_clamped_and_documented():
    b = Budget(learning_rate=1e-4, epochs=10, min_steps=20, max_steps=50, batch_size=8)
    assert b.steps(4) == 20 and b.steps(16) == 20 and b.steps(32) == 40 and b.steps(1000) == 50
    assert get_budget("lora", "quick").max_steps == round(BUDGETS["lora"].max_steps * 0.5)
    with pytest.raises(KeyError, match="No budget for method"):
        get_budget("nope")


def test_step_cap_never_cuts_training_below_min_epochs():
    """160 steps of 8 are 1.3 passes over 1,000 labels: the cap lifts to min_epochs passes there, k-shot sets keep
    their budgets, and a max_steps the user gives stays a hard cap."""
    from hf_lowdata.workflow import resolve_budget

    full = get_budget("full")
    assert (full.max_steps, full.min_epochs, full.batch_size) == (160, MIN_EPOCHS, 8) and MIN_EPOCHS == 5
    assert full.steps(16) == 40 and full.steps(64) == 160 and full.steps(256) == 160  # k-shot: unchanged
    assert full.steps(300) == 188 and full.steps(1000) == 625  # ceil(5 * N / 8)
    assert Budget(learning_rate=1e-4, epochs=2, max_steps=10, min_epochs=5).steps(1000) == 250  # epochs bound it
    assert Budget(learning_rate=1e-4, max_steps=10).steps(1000) == 10  # a Budget built by hand: a hard cap
    assert get_budget("full", "quick").steps(1000) == 313  # the preset halves the floor too
    assert get_budget("sparse_expert", "quick").options["meta_steps"] == 50  # and a method's own loop
    assert get_budget("sparse_expert").options["meta_steps"] == 100
    assert get_budget("probe").steps(1000) == 0  # no epochs, no steps
    capped, _ = resolve_budget("full", config={"max_steps": 100})
    assert capped.steps(1000) == 100
    floor, _ = resolve_budget("full", config={"max_steps": 100, "min_epochs": 2})
    assert floor.steps(1000) == 250


def test_every_method_has_a_budget_and_variants_share_their_methods():
    from hf_lowdata.methods import METHODS
    from hf_lowdata.workflow import budget_key

    missing = {name: budget_key(name) for name in METHODS if budget_key(name) not in BUDGETS}
    assert not missing, f"methods without a budget entry: {missing}"
    assert budget_key("ftp_lora") == "ftp_lora"  # a budget of its own, not ftp's
    assert budget_key("mixup_blo_fast") == "mixup_blo_fast"
    assert budget_key("sparse_expert_dense") == "sparse_expert"
    assert budget_key("twin_turbo_ce") == "twin_turbo"
    assert budget_key("nope") == "nope"  # unknown: get_budget then names the known ones


@pytest.mark.parametrize("method", ["full", "lora"])
def test_transformer_baselines_fit_predict_save(method, tiny_bert_dir, tmp_path):
    task = _task()
    ctx = RunContext(model=tiny_bert_dir, seed=0, budget=FAST, work_dir=tmp_path, quiet=True)
    fitted = get_method(method).fit(task, ctx)
    proba = fitted.predict_proba(task.test.texts)
    assert proba.shape == (40, 2) and np.allclose(proba.sum(1), 1, atol=1e-5)
    saved = fitted.save(tmp_path / "saved")
    files = {p.name for p in saved.iterdir()}
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files), files
    if method == "lora":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert fitted.trainable_parameters < 20_000
    else:
        assert "model.safetensors" in files
        assert fitted.trainable_parameters > 900_000  # every weight of the tiny BERT


def test_training_is_reproducible_for_a_seed(tiny_bert_dir, tmp_path):
    from transformers import set_seed

    task = _task()
    out = []
    for i in range(2):
        set_seed(0)
        ctx = RunContext(model=tiny_bert_dir, seed=0, budget=FAST, work_dir=tmp_path / str(i), quiet=True)
        out.append(get_method("lora").fit(task, ctx).predict_proba(task.test.texts))
    np.testing.assert_array_equal(out[0], out[1])


def test_shared_encoder_runs_on_the_requested_device(tiny_bert_dir):
    # the probe's (and TwinTurbo's feature) encoder stayed on the CPU whatever --device said; "meta"
    # stands in for a GPU here: the encoder is placed where it is asked to be, one copy per device
    cache = SharedCache()
    assert {p.device.type for p in cache.encoder(tiny_bert_dir, "meta").parameters()} == {"meta"}
    assert {p.device.type for p in cache.encoder(tiny_bert_dir, "cpu").parameters()} == {"cpu"}
    assert cache.encoder(tiny_bert_dir, "cpu") is cache.encoder(tiny_bert_dir, None)  # no GPU here: the default


def test_every_classifier_moves_to_a_device_or_says_it_cannot(tiny_bert_dir):
    """``predict --device`` moves what predicts ("meta" stands in for a GPU); a classifier without ``to`` says so
    (load_classifier guessed from attribute names and left some kinds where they were)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_lowdata.methods import FittedClassifier
    from hf_lowdata.methods.base import TransformerClassifier
    from hf_lowdata.methods.probe import ProbeClassifier

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    transformer = TransformerClassifier(model, AutoTokenizer.from_pretrained(tiny_bert_dir), ("a", "b"), 16)
    assert transformer.to("meta") is transformer and {p.device.type for p in model.parameters()} == {"meta"}
    from sklearn.linear_model import LogisticRegression

    head = LogisticRegression().fit(np.eye(2), [0, 1])
    probe = ProbeClassifier(SharedCache(), tiny_bert_dir, head=head, label_names=("a", "b"), max_length=16)
    assert probe.to(torch.device("meta")).device == "meta"

    class Custom(FittedClassifier):
        def predict_proba(self, texts, use_cache=True):
            return np.zeros((len(texts), 2))

        def save(self, directory):
            return directory

    with pytest.raises(NotImplementedError, match=r"Custom cannot move to cuda:0: give it a to\(device\) method"):
        Custom().to("cuda:0")


def test_probe_uses_shared_embedding_cache(tiny_bert_dir, tmp_path):
    task = _task()
    cache = SharedCache()
    ctx = RunContext(model=tiny_bert_dir, seed=0, work_dir=tmp_path, cache=cache)
    fitted = get_method("probe").fit(task, ctx)
    first = fitted.predict_proba(task.test.texts)
    assert len(cache._embeddings) == 2  # labelled set and test set, each once
    np.testing.assert_allclose(fitted.predict_proba(task.test.texts), first)
    np.testing.assert_allclose(fitted.predict_proba(task.test.texts, use_cache=False), first, atol=1e-5)
    assert len(cache._embeddings) == 2
    assert fitted.caches_features and fitted.trainable_parameters == 32 * 1 + 1
    assert {p.name for p in fitted.save(tmp_path / "probe").iterdir()} == {"probe_head.safetensors", "probe_config.json"}


@pytest.mark.parametrize("value", ["many", "0", "-1", "nan"])
def test_probe_refuses_a_c_that_is_not_a_positive_number(value, tiny_bert_dir, tmp_path):
    """C=many failed in float() and C=0 inside scikit-learn, neither saying which setting or what it takes."""
    ctx = RunContext(model=tiny_bert_dir, seed=0, work_dir=tmp_path, options={"C": value})
    with pytest.raises(MethodConfigError, match="probe: C .* must be a number above 0"):
        get_method("probe").fit(_task(), ctx)


@pytest.mark.slow
def test_probe_on_real_minilm_beats_chance(shared_data, tmp_path):
    from hf_lowdata.data import load_data

    splits = load_data(shared_data / "sst2")
    task = make_few_shot_task(splits, seed=0, k=16)
    fitted = get_method("probe").fit(task, RunContext(seed=0, work_dir=tmp_path))
    acc = (fitted.predict(splits.test.texts[:400]) == np.array(splits.test.labels[:400])).mean()
    assert acc > 0.6  # chance is 0.5; a 16-shot probe on MiniLM is at ~0.7


@pytest.mark.slow
def test_probe_weights_classes_so_that_an_unbalanced_labelled_set_does_not_collapse_it(shared_data, tmp_path):
    """Three wrong labels of 32 (13 / 19) made the strongly regularised probe call 1,799 of 1,821 test sentences
    positive: its intercept followed the class counts."""
    from hf_lowdata.data import load_data

    splits = load_data(shared_data / "sst2")
    task = make_few_shot_task(splits, seed=0, k=16, label_noise=0.1)
    assert sorted(np.bincount(task.labelled.labels)) == [13, 19]
    texts = splits.test.texts[:400]
    shares = {}
    for weighting in ("balanced", "none"):
        ctx = RunContext(seed=0, work_dir=tmp_path, options={"class_weight": weighting})
        predicted = get_method("probe").fit(task, ctx).predict(texts)
        shares[weighting] = np.bincount(predicted, minlength=2).max() / len(texts)
    assert shares["none"] > 0.95 and shares["balanced"] < 0.8  # the test half is 50/50
    with pytest.raises(MethodConfigError, match="class_weight must be 'balanced' or 'none'"):
        get_method("probe").fit(task, RunContext(seed=0, work_dir=tmp_path, options={"class_weight": "auto"}))


@pytest.mark.slow
def test_setfit_baseline_runs_on_minilm(tmp_path):
    from hf_lowdata.methods import METHODS

    assert METHODS["setfit"].unavailable_reason() is None, "setfit is in the dev extra and must import here"
    task = replace(_task(k=4), dev=_task(k=2).labelled)  # a dev set SetFit cannot use: the record says so
    ctx = RunContext(seed=0, budget=Budget(learning_rate=2e-5, epochs=1, batch_size=8, options={"num_iterations": 2}),
                     work_dir=tmp_path)
    fitted = get_method("setfit").fit(task, ctx)
    assert fitted.predict_proba(task.test.texts[:5]).shape == (5, 2)
    assert fitted.notes["dev_set"].startswith("not used")
    files = {p.name for p in fitted.save(tmp_path / "sf").iterdir()}
    assert "setfit_head.safetensors" in files and not any(f.endswith(".pkl") for f in files)


@pytest.mark.slow
def test_setfit_weights_its_head_on_an_uneven_labelled_set_only(tmp_path):
    task = _task(k=4)
    labels = list(task.labelled.labels)
    uneven = replace(task, labelled=task.labelled.subset([i for i, y in enumerate(labels) if y == 0] +
                                                         [i for i, y in enumerate(labels) if y == 1][:1]))
    budget = replace(get_budget("setfit"), max_steps=1, options={"num_iterations": 1})
    heads = {}
    for name, data, options in [("uneven", uneven, {"class_weight": "balanced"}), ("default", uneven, {}),
                                ("even", task, {"class_weight": "balanced"})]:
        fitted = get_method("setfit").fit(data, RunContext(seed=0, budget=budget, work_dir=tmp_path / name,
                                                           options=options))
        heads[name] = (fitted.model.model_head.class_weight, fitted.notes.get("class_weights"))
    assert heads == {"uneven": ("balanced", "balanced (logistic head)"), "default": (None, None), "even": (None, None)}


@pytest.mark.slow
def test_setfit_reports_progress_honours_cancel_and_its_step_cap(tmp_path):
    """SetFit trained through the demo's Cancel (42 s on) with no progress, and ignored max_steps."""
    import threading

    from hf_lowdata.methods.base import RunCancelled

    task = _task(k=4)
    budget = replace(get_budget("setfit"), max_steps=3, options={"num_iterations": 4})  # recipe: 2*4*8/16 = 4 steps
    seen = []
    ctx = RunContext(seed=0, budget=budget, work_dir=tmp_path, progress=lambda message, done: seen.append(message))
    get_method("setfit").fit(task, ctx)
    assert seen == ["setfit: step 1/3", "setfit: step 2/3", "setfit: step 3/3"]
    # what the model card reports: the steps trained (it said 1: the generic rule on the recipe's budget)
    assert get_method("setfit").planned_steps(len(task.labelled), budget, {}) == 3
    assert get_method("setfit").planned_steps(16, get_budget("setfit"), {}) == 40  # 2 x 20 pairs x 16 / 16
    assert get_method("setfit").planned_steps(16, get_budget("setfit", "quick"), {"num_iterations": 10}) == 10

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RunCancelled, match="setfit: cancelled at step 1"):
        get_method("setfit").fit(task, RunContext(seed=0, budget=budget, work_dir=tmp_path, cancel=cancel))


@pytest.mark.parametrize("method", ["lora", "twin_turbo", "sparse_expert_pretrained"])
def test_dev_set_selects_a_step_and_restores_it(tiny_bert_dir, tmp_path, method, monkeypatch):
    """With a dev set, every method that trains in steps keeps the parameters of its best dev step (the
    projector from cached features, SMAT's test-time fine-tuning with prototypes too)."""
    from hf_lowdata.data import DatasetSplits

    rows = toy_sentences(120, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool), seed=0, k=8, dev_k=8)
    ctx = RunContext(model=tiny_bert_dir, seed=0, budget=Budget(learning_rate=5e-3, epochs=1, min_steps=10,
                     max_steps=10, batch_size=8), work_dir=tmp_path, quiet=True)
    from hf_lowdata.methods import base

    # The toy dev accuracy is flat, so the last step would win every tie and restore() would go untested:
    # score dev with the method's own logits, but declare only the 2nd scored step (step 4) correct.
    real_logits: list[np.ndarray] = []
    original_init = base.DevSelector.__init__

    def init(self, labels, dev_logits, max_steps):
        def scored(model):
            real_logits.append(dev_logits(model))
            right = len(real_logits) == 2
            return np.eye(2)[np.asarray(labels) if right else 1 - np.asarray(labels)]
        original_init(self, labels, scored, max_steps)

    monkeypatch.setattr(base.DevSelector, "__init__", init)
    fitted = get_method(method).fit(task, ctx)
    assert fitted.notes["selected_step"] == 4 and fitted.notes["dev_accuracy"] == 1.0
    assert len(real_logits) == 5  # steps 2, 4, 6, 8, 10
    softmax = [torch.softmax(torch.as_tensor(x, dtype=torch.float64), -1).numpy() for x in real_logits]
    final = fitted.predict_proba(task.dev.texts)
    assert np.abs(softmax[1] - softmax[4]).max() > 2e-5  # training moved the model after step 4
    np.testing.assert_allclose(final, softmax[1], atol=2e-6, rtol=0)  # the restored parameters are step 4's


def test_probe_chooses_c_on_the_dev_set(tiny_bert_dir, tmp_path):
    from hf_lowdata.data import DatasetSplits

    rows = toy_sentences(120, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool), seed=0, k=8, dev_k=8)
    fitted = get_method("probe").fit(task, RunContext(model=tiny_bert_dir, seed=0, work_dir=tmp_path))
    assert fitted.notes["C"] in (0.01, 0.1, 1.0, 10.0, 100.0) and 0.0 <= fitted.notes["dev_accuracy"] <= 1.0
    assert "C" not in get_method("probe").fit(_task(), RunContext(model=tiny_bert_dir, seed=0, work_dir=tmp_path)).notes


def test_bf16_context_trains_under_bf16_autocast(tiny_bert_dir, tmp_path, monkeypatch):
    """RunContext(bf16=True) reaches the Trainer (bf16 autocast; weights stay fp32) and trains."""
    import hf_lowdata.training as training

    seen = []
    real = training.few_shot_training_args

    def recording(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(training, "few_shot_training_args", recording)
    task = _task()
    ctx = RunContext(model=tiny_bert_dir, seed=0, budget=FAST, work_dir=tmp_path, quiet=True, bf16=True, device="cpu")
    fitted = get_method("lora").fit(task, ctx)
    assert [a.bf16 for a in seen] == [True]
    assert all(p.dtype == torch.float32 for p in fitted.model.parameters())
    assert np.isfinite(fitted.predict_proba(task.test.texts)).all()


def test_twin_turbo_trains_when_the_draw_leaves_no_unlabelled_text(tiny_bert_dir, tmp_path):
    """A small dataset whose labelled draw takes every training text left an empty pool (the CLI asks for 2,000
    by default), which the trainer refused ("unlabeled_dataset is empty")."""
    rows = toy_sentences(8, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(i % 2 for i in range(8)), ("neg", "pos"), "toy")
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool), seed=0, k=4, unlabelled=2000)
    assert task.unlabelled is not None and len(task.unlabelled) == 0
    fitted = get_method("twin_turbo").fit(task, RunContext(model=tiny_bert_dir, seed=0, budget=FAST,
                                                           work_dir=tmp_path, quiet=True))
    assert fitted.predict(["a fine film"]).shape == (1,)


def test_a_variants_defining_option_cannot_be_overridden_silently():
    from hf_lowdata.methods.base import fixed_option_conflicts

    assert fixed_option_conflicts(["sparse_expert", "mixup_blo"], {"num_experts": 6, "folds": 2}) is None
    assert fixed_option_conflicts(["sparse_expert_m4", "mixup_blo_fast"], {"num_experts": 4, "folds": 1}) is None
    message = fixed_option_conflicts(["sparse_expert", "sparse_expert_m4", "mixup_blo_fast"],
                                     {"num_experts": 8, "folds": 3, "r": 4})
    assert message is not None
    assert "sparse_expert_m4 is defined by num_experts=4; mixup_blo_fast is defined by folds=1" in message
    assert "sparse_expert is" not in message and "'r'" not in message


def test_setfit_reloads_with_the_labels_its_head_was_trained_on(tiny_bert_dir, tmp_path):
    """A declared label without training examples (meta.json names 'neutral', the file has none) leaves SetFit's head
    with columns for labels 0 and 2 only; the saved folder loaded them as labels 0 and 1, so `predict` answered
    'neutral' for every 'pos' text the trained model had called 'pos'."""
    from hf_lowdata.workflow import load_classifier

    rows = toy_sentences(16, 0)
    names = ("neg", "neutral", "pos")
    labelled = TextDataset(tuple(r["text"] for r in rows), tuple(2 * r["label"] for r in rows), names, "toy")
    task = make_few_shot_task(DatasetSplits("toy", names, labelled), seed=0, n=16)
    budget = Budget(learning_rate=2e-5, epochs=1, batch_size=8, max_steps=2, options={"num_iterations": 1})
    fitted = get_method("setfit").fit(task, RunContext(model=tiny_bert_dir, seed=0, budget=budget, work_dir=tmp_path))
    folder = fitted.save(tmp_path / "saved")
    loaded = load_classifier(folder)
    texts = [r["text"] for r in toy_sentences(8, 5)]
    assert fitted.predict_proba(texts)[:, 1].max() == 0.0  # 'neutral' was never trained
    np.testing.assert_allclose(loaded.predict_proba(texts), fitted.predict_proba(texts), atol=1e-5)
    # a folder of an older hf_lowdata (no recorded classes): refused when its columns cannot be named, not misread
    from safetensors.torch import load_file, save_file

    from hf_lowdata.workflow import AdapterLoadError

    arrays = load_file(str(folder / "setfit_head.safetensors"))
    save_file({k: v for k, v in arrays.items() if k != "classes"}, str(folder / "setfit_head.safetensors"))
    with pytest.raises(AdapterLoadError, match="1 class column.* for 3 label names"):
        load_classifier(folder)


def test_setfit_cuts_texts_at_the_budgets_max_length_in_training_and_after_reloading(tiny_bert_dir, tmp_path):
    """SetFit gave max_length to its TrainingArguments, which only its end-to-end head reads: the sentence encoder
    trained and predicted on its own max_seq_length (256 for all-MiniLM-L6-v2), while the card recorded 128, and
    --config max_length=... changed nothing (300-600 word texts: 2.5x the others' training time)."""
    from hf_lowdata.workflow import load_classifier

    rows = toy_sentences(16, 0)
    labelled = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), labelled), seed=0, k=4)
    budget = Budget(learning_rate=2e-5, epochs=1, batch_size=8, max_steps=2, max_length=12,
                    options={"num_iterations": 1})
    fitted = get_method("setfit").fit(task, RunContext(model=tiny_bert_dir, seed=0, budget=budget, work_dir=tmp_path))
    head = " ".join(["the plot of this film"] * 4)  # well over 12 tokens: what follows is cut
    texts = [f"{head} great wonderful", f"{head} awful dreadful boring"]
    assert fitted.model.model_body.max_seq_length == 12
    np.testing.assert_allclose(*fitted.predict_proba(texts), atol=1e-6)
    loaded = load_classifier(fitted.save(tmp_path / "saved"))
    np.testing.assert_allclose(*loaded.predict_proba(texts), atol=1e-6)
    np.testing.assert_allclose(loaded.predict_proba(texts), fitted.predict_proba(texts), atol=1e-5)


@pytest.mark.parametrize("method", ["mixup_blo", "mixup_blo_fast", "tpgm"])
def test_methods_with_a_held_out_split_refuse_one_example_per_class(method, tiny_bert_dir, tmp_path):
    """k = 1 on 20 classes: MixupBLO failed as an "unexpected failure" saying it could not split "20 labelled
    example(s)" and needed at least 2; TPGM's error pointed to a Python argument. Both now say why (one example per
    class, nothing to hold out) and what to do, as a DataError the CLI prints as one line."""
    from hf_lowdata.data import DataError

    names = tuple(f"class {i}" for i in range(20))
    labelled = TextDataset(tuple(f"text about topic {i}" for i in range(20)), tuple(range(20)), names, "toy")
    task = make_few_shot_task(DatasetSplits("toy", names, labelled), seed=0, k=1)
    ctx = RunContext(model=tiny_bert_dir, seed=0, budget=FAST, work_dir=tmp_path, quiet=True)
    with pytest.raises(DataError, match=rf"{method} holds out .* every class has at most one .*--shots 2"):
        get_method(method).fit(task, ctx)
    if method == "mixup_blo":  # the single-level ablation needs no held-out split: it still trains
        get_method("mixup_blo_joint").fit(task, replace(ctx, options={"folds": 1}))


@pytest.mark.parametrize("method", ["probe", "setfit"])
def test_a_labelled_set_of_one_class_is_a_clear_error(method, tiny_bert_dir, tmp_path):
    """k = 1 with 50% label noise flips one of the two examples, leaving one class: the probe failed inside
    scikit-learn ("This solver needs samples of at least 2 classes"), SetFit with an IndexError in its pair sampler."""
    from hf_lowdata.data import DataError

    rows = toy_sentences(20, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool), seed=0, k=1, label_noise=0.5)
    assert len(set(task.labelled.labels)) == 1
    budget = Budget(learning_rate=2e-5, epochs=1, batch_size=8, max_steps=2, options={"num_iterations": 1})
    with pytest.raises(DataError, match=r"fewer than two classes with examples .*at least two labels"):
        get_method(method).fit(task, RunContext(model=tiny_bert_dir, seed=0, budget=budget, work_dir=tmp_path))


def test_probe_never_serves_the_embeddings_of_other_texts_that_digest_alike(tiny_bert_dir, tmp_path):
    """The shared embedding cache joined texts with a separator character, so one text holding it ("a\\x1eb") was a
    hit for the list ["a", "b"]: the probe answered two rows of another input's probabilities for one text."""
    fitted = get_method("probe").fit(_task(), RunContext(model=tiny_bert_dir, seed=0, work_dir=tmp_path))
    fitted.predict_proba(["a good film", "a dull plot"])
    joined = ["a good film\x1ea dull plot"]
    got = fitted.predict_proba(joined)
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, fitted.predict_proba(joined, use_cache=False), atol=1e-6)


@pytest.mark.parametrize("method", ["probe", "setfit"])
def test_a_saved_logistic_head_reloads_to_identical_probabilities(method, tiny_bert_dir, tmp_path):
    """Fitted on float32 embeddings, the probe's and SetFit's heads computed in float32 while their reloaded copies
    (float64 coefficients) computed in float64: probabilities ~6e-8 apart, so a near tie could change a prediction."""
    from hf_lowdata.workflow import load_classifier

    rows = toy_sentences(30, 0)
    names = ("neg", "neutral", "pos")
    labelled = TextDataset(tuple(r["text"] for r in rows), tuple(i % 3 for i in range(30)), names, "toy")
    task = make_few_shot_task(DatasetSplits("toy", names, labelled), seed=0, k=4)
    budget = Budget(learning_rate=2e-5, epochs=1, batch_size=8, max_steps=2, options={"num_iterations": 1})
    fitted = get_method(method).fit(task, RunContext(model=tiny_bert_dir, seed=0, budget=budget, work_dir=tmp_path))
    texts = [r["text"] for r in toy_sentences(40, 7)]
    loaded = load_classifier(fitted.save(tmp_path / "saved"))
    np.testing.assert_array_equal(loaded.predict_proba(texts), fitted.predict_proba(texts, use_cache=False))


@pytest.mark.parametrize("value", [0, -1, 2.5, "many"])
def test_twin_turbo_refuses_an_unlabelled_batch_size_that_is_not_a_positive_whole_number(value, tiny_bert_dir,
                                                                                        tmp_path):
    """0 failed as "unlabeled_dataset is empty" (the pool was cut to 0 texts), -1 inside numpy ("negative dimensions
    are not allowed"), 2.5 trained silently with batches of 2; each now names the option and what it takes."""
    from hf_lowdata.methods.base import MethodConfigError

    rows = toy_sentences(40, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool), seed=0, k=4, unlabelled=20)
    ctx = RunContext(model=tiny_bert_dir, seed=0, budget=FAST, work_dir=tmp_path, quiet=True,
                     options={"unlabelled_batch_size": value})
    with pytest.raises(MethodConfigError, match=rf"unlabelled_batch_size must be a whole number .*got {value!r}"):
        get_method("twin_turbo").fit(task, ctx)


def _reachable_cached_states(root) -> int:
    """Token-state entries of every FeatureCache reachable from ``root`` (what it keeps in memory)."""
    import gc

    from hf_lowdata.features import FeatureCache

    seen, todo, total = set(), [root], 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, (type, torch.Tensor, np.ndarray, str, bytes)):
            continue
        seen.add(id(obj))
        if isinstance(obj, FeatureCache):
            total += sum(len(entries) for entries in obj._entries.values())
        todo.extend(gc.get_referents(obj))
    return total


def test_twin_turbo_predictions_after_its_run_keep_no_token_states(tiny_bert_dir, tmp_path, monkeypatch):
    """Once the run's SharedCache was gone, a trained model (the demo keeps one per session) cached the token states
    of every text it was asked to predict in a cache of its own, growing with each new text for the session's life;
    and one call materialised all its texts' states at once. Predictions are unchanged."""
    import gc

    task = _task()
    shared = SharedCache()
    ctx = RunContext(model=tiny_bert_dir, seed=0, budget=FAST, work_dir=tmp_path, quiet=True, cache=shared)
    fitted = get_method("twin_turbo").fit(task, ctx)
    texts = [r["text"] for r in toy_sentences(300, 11)]
    expected = fitted.predict_proba(texts)
    del ctx, shared
    gc.collect()
    np.testing.assert_allclose(fitted.predict_proba(texts), expected, atol=1e-6, rtol=0)
    assert _reachable_cached_states(fitted) == 0
    from hf_lowdata.methods import twin_turbo

    monkeypatch.setattr(twin_turbo, "PREDICT_CHUNK", 64)
    sizes, states = [], fitted.states
    fitted.states = lambda chunk: sizes.append(len(chunk)) or states(chunk)
    np.testing.assert_allclose(fitted.predict_proba(texts), expected, atol=1e-6, rtol=0)
    assert sizes == [64, 64, 64, 64, 44]  # never all 300 texts' states at once
    assert fitted.predict_proba([]).shape == (0, 2)


@pytest.mark.parametrize(("options", "message"), [
    ({"r": 2.5}, r"r must be a whole number >= 1, got 2.5"),
    ({"r": "abc"}, r"r must be a whole number >= 1, got 'abc'"),
    ({"r": True}, r"r must be a whole number >= 1, got True"),
    ({"r": 0}, r"r must be a whole number >= 1, got 0"),
    ({"lora_alpha": -1}, r"lora_alpha must be a whole number >= 1, got -1"),
    ({"lora_dropout": 1.5}, r"lora_dropout must be a number in \[0, 1\), got 1.5"),
])
def test_lora_options_out_of_range_are_method_config_errors(options, message, tiny_bert_dir, tmp_path):
    """int() cut r=2.5 to 2 and took r=True as 1, a negative lora_alpha (a negated update) was accepted, and
    r='abc' failed with int()'s ValueError: each is now a MethodConfigError naming the option."""
    ctx = RunContext(model=tiny_bert_dir, seed=0, work_dir=tmp_path, quiet=True, options=options)
    with pytest.raises(MethodConfigError, match=message):
        get_method("lora").build_model(_task(), ctx)
    ok = RunContext(model=tiny_bert_dir, seed=0, work_dir=tmp_path, quiet=True,
                    options={"r": "4", "lora_alpha": 16.0, "lora_dropout": 0.1})
    config = get_method("lora").build_model(_task(), ok).peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 16, 0.1)
