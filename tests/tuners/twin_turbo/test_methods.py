"""The bench methods twin_turbo / twin_turbo_ce / _nolatent / _noadv / _notask on toy data with a tiny BERT."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from hf_lowdata.budgets import Budget
from hf_lowdata.data import DatasetSplits, make_few_shot_task
from hf_lowdata.methods import RunContext, SharedCache, get_method
from hf_lowdata.methods.twin_turbo import METHOD_VARIANTS, build_config, feature_cache
from tests.tuners.twin_turbo.helpers import SMALL, toy_text

BUDGET = Budget(learning_rate=1e-3, epochs=1, min_steps=6, max_steps=6, batch_size=8, warmup_ratio=0.0,
                options={"unlabelled_batch_size": 8, **SMALL})


def _task(seed=0):
    splits = DatasetSplits("toy", ("neg", "pos"), toy_text(60, 0), test=toy_text(20, 9))
    return make_few_shot_task(splits, seed=seed, k=4, unlabelled=16)


@pytest.mark.parametrize("name", list(METHOD_VARIANTS))
def test_methods_fit_predict_and_save_only_the_adapter(name, tiny_bert_dir, tmp_path):
    task = _task()
    ctx = RunContext(model=str(tiny_bert_dir), seed=0, budget=BUDGET, work_dir=tmp_path, quiet=True)
    fitted = get_method(name).fit(task, ctx)
    cached = fitted.predict_proba(task.test.texts)
    direct = fitted.predict_proba(task.test.texts, use_cache=False)  # backbone + projector on raw text
    assert cached.shape == (20, 2) and np.allclose(cached.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(cached, direct, atol=2e-3)  # fp16 cache vs fp32 states
    keys = load_file(fitted.save(tmp_path / "saved") / "adapter_model.safetensors").keys()
    assert all("twin_turbo_projector" in k or "twin_turbo_head" in k for k in keys)
    assert 0 < fitted.trainable_parameters < 200_000


def test_ablations_switch_off_their_terms():
    ctx = RunContext(budget=BUDGET, options={"head": "binary", "r": 16})  # unknown options are ignored
    configs = {name: build_config(ctx, variant) for name, variant in METHOD_VARIANTS.items()}
    assert configs["twin_turbo"].head == "binary" and configs["twin_turbo"].uses_unlabelled_terms
    assert not configs["twin_turbo_ce"].uses_unlabelled_terms
    assert configs["twin_turbo_nolatent"].latent_weight == 0 < configs["twin_turbo_nolatent"].adversarial_weight
    assert configs["twin_turbo_noadv"].adversarial_weight == 0 < configs["twin_turbo_noadv"].latent_weight
    notask = configs["twin_turbo_notask"]
    assert notask.marginal_weight == notask.adversarial_weight == 0 < notask.latent_weight
    assert get_method("twin_turbo").uses_unlabelled and not get_method("twin_turbo_ce").uses_unlabelled


def test_runs_of_one_benchmark_share_the_feature_cache(tiny_bert_dir, tmp_path):
    shared = SharedCache()
    for seed in (0, 1):
        ctx = RunContext(model=str(tiny_bert_dir), seed=seed, budget=BUDGET, work_dir=tmp_path, cache=shared,
                         quiet=True)
        get_method("twin_turbo").fit(_task(seed), ctx)
        if seed == 0:
            first = feature_cache(ctx).computed
    assert feature_cache(ctx).computed < 2 * first  # the second seed reuses the overlapping texts


def test_a_trained_model_does_not_keep_the_runs_token_states_alive(tiny_bert_dir, tmp_path):
    """The demo keeps each trained model for its session (to push it): through its prediction closure it kept
    the whole feature cache, every unlabelled text's token states included (273 MiB for 10,000 texts)."""
    import gc
    import weakref

    shared = SharedCache()
    ctx = RunContext(model=str(tiny_bert_dir), seed=0, budget=BUDGET, work_dir=tmp_path, cache=shared, quiet=True)
    task = _task()
    fitted = get_method("twin_turbo").fit(task, ctx)
    before = fitted.predict_proba(task.test.texts)
    cache = weakref.ref(feature_cache(ctx))
    del ctx, shared
    gc.collect()
    assert cache() is None
    np.testing.assert_allclose(fitted.predict_proba(task.test.texts), before, atol=1e-6)  # its own cache now


def test_cancel_stops_while_the_token_states_are_cached(tiny_bert_dir, tmp_path):
    """Reading a 10,000-text unlabelled file went on for 106 s after the demo's Cancel."""
    import threading

    from hf_lowdata.methods import RunCancelled

    cancel, seen = threading.Event(), []

    def progress(message, done):
        seen.append(message)
        cancel.set()  # pressed during the first batch

    ctx = RunContext(model=str(tiny_bert_dir), seed=0, budget=BUDGET, work_dir=tmp_path, quiet=True,
                     progress=progress, cancel=cancel)
    with pytest.raises(RunCancelled, match="cancelled while caching token states"):
        get_method("twin_turbo").fit(_task(), ctx)
    assert seen and seen[0].startswith("twin_turbo: caching token states")


def test_only_the_unlabelled_texts_training_will_draw_are_cached(tiny_bert_dir, tmp_path):
    """The whole pool was run through the backbone and kept in memory (a 20k-text pool of long texts took over 10 GB),
    while training draws at most steps x unlabelled batch texts of it."""
    splits = DatasetSplits("toy", ("neg", "pos"), toy_text(120, 0), test=toy_text(20, 9))
    task = make_few_shot_task(splits, seed=0, k=4, unlabelled=100)
    ctx = RunContext(model=str(tiny_bert_dir), seed=0, budget=BUDGET, work_dir=tmp_path, quiet=True,
                     cache=SharedCache())
    fitted = get_method("twin_turbo").fit(task, ctx)
    assert fitted.notes["unlabelled_pool"] == 100 and fitted.notes["unlabelled_used"] == 6 * 8
    prior = fitted.notes["label_prior"]  # estimated on the drawn part of the pool, recorded with the run
    assert len(prior) == 2 and abs(sum(prior) - 1.0) < 1e-3 and min(prior) >= 0.0099
    cached = sum(len(entries) for entries in feature_cache(ctx)._entries.values())
    assert cached == 8 + 6 * 8  # the labelled texts and the drawn part of the pool


def test_a_twin_turbo_classifier_saved_directly_reloads_with_its_label_count(tiny_bert_dir, tmp_path):
    """fitted.save(dir) then load_classifier(dir) failed: 'cannot tell the number of labels' (the head's weight
    key was not one the loader knew, and it did not read the config's num_labels)."""
    from hf_lowdata.workflow import load_classifier

    task = _task()
    ctx = RunContext(model=str(tiny_bert_dir), seed=0, budget=BUDGET, work_dir=tmp_path, quiet=True)
    fitted = get_method("twin_turbo").fit(task, ctx)
    saved = fitted.save(tmp_path / "saved")
    with pytest.warns(UserWarning, match="names no labels"):
        reloaded = load_classifier(saved, model=str(tiny_bert_dir))
    expected = fitted.predict_proba(task.test.texts, use_cache=False)
    np.testing.assert_allclose(reloaded.predict_proba(task.test.texts), expected, atol=1e-5)
