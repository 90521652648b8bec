"""Pair tasks (premise / hypothesis): every method reads both texts, as the model's two segments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_lowdata.cli import main
from hf_lowdata.data import PAIR_SEPARATOR, FewShotTask, TextDataset, join_pair
from hf_lowdata.methods import METHODS, RunContext, get_method
from hf_lowdata.methods.base import MethodConfigError
from hf_lowdata.workflow import load_classifier, train_method
from tests.cli.outputs import runnable_methods, tiny_config
from tests.helpers import write_jsonl

LABELS = ("food", "sport")
#: The label is in the second text only; the first texts are the same for both classes.
PREMISES = ["my neighbour told me a story yesterday", "there was a long article in the paper",
            "we talked for an hour on the train", "the radio programme went on all evening",
            "she wrote a letter to her brother", "the teacher explained it to the class",
            "a friend sent me a message about it", "the podcast covered it in detail"]
HYPOTHESES = {0: ["it was about cooking pasta", "the topic was a delicious meal", "it described baking bread",
                  "they discussed a new restaurant menu"],
              1: ["it was about a football match", "the topic was a tennis final", "it described a marathon race",
                  "they discussed the basketball league"]}


def _pairs(n: int, offset: int, source: str) -> TextDataset:
    texts, labels = [], []
    for i in range(n):
        label = i % 2
        texts.append(join_pair(PREMISES[(i // 2 + offset) % len(PREMISES)], HYPOTHESES[label][(i // 2 + offset) % 4]))
        labels.append(label)
    return TextDataset(tuple(texts), tuple(labels), LABELS, source)


def _task() -> FewShotTask:
    unlabelled = _pairs(8, 5, "pairs-unlabelled").without_labels()
    return FewShotTask("pairs", LABELS, _pairs(16, 0, "pairs-train"), seed=0, unlabelled=unlabelled)


#: One method of each kind of model (a probe, fine-tuning, each of the four PEFT methods, SetFit apart): every one
#: reads its texts through the same tokenisation, and these cover each way that happens (tokenised datasets, length-
#: sorted batches, cached token states, episodes and prototypes).
PAIR_METHODS = ["probe", "full", "lora", "ftp", "mixup_blo_fast", "twin_turbo", "sparse_expert_pretrained",
                "sparse_expert"]


def test_the_pair_methods_cover_every_kind():
    assert set(PAIR_METHODS) <= set(runnable_methods())
    assert {METHODS[m].__mro__[1].__name__ for m in PAIR_METHODS} >= {"Method", "TransformerMethod"}


@pytest.mark.parametrize("method", PAIR_METHODS)
def test_a_method_trains_saves_and_predicts_pairs(method, tiny_bert_dir, tmp_path):
    task = _task()
    evaluation = _pairs(8, 3, "pairs-eval")
    result = train_method(method, task, tmp_path / method, model=str(tiny_bert_dir), config=tiny_config(method),
                          evaluation_data=evaluation)
    assert result.evaluation.examples == 8
    card = (tmp_path / method / "README.md").read_text()
    assert "text_pairs: true" in card and "pairs of texts (text, text_pair)" in card
    loaded = load_classifier(tmp_path / method, model=tiny_bert_dir)
    as_tuples = [tuple(text.split(PAIR_SEPARATOR)) for text in evaluation.texts]
    np.testing.assert_allclose(loaded.predict_proba(as_tuples), result.classifier.predict_proba(evaluation.texts),
                               atol=1e-5)
    # the second segment reaches the model: another second text gives other probabilities
    swapped = [(first, "an unrelated remark about the weather") for first, _ in as_tuples]
    assert not np.allclose(loaded.predict_proba(swapped), loaded.predict_proba(as_tuples), atol=1e-6)


@pytest.mark.slow
def test_the_probe_learns_from_the_second_text(minilm_dir, tmp_path):
    """On the packaged MiniLM: the label is in the second text only, so the probe on pairs is right where a probe on
    the first texts alone cannot beat chance."""
    task = FewShotTask("pairs", LABELS, _pairs(16, 0, "pairs-train"), seed=0)
    test = _pairs(32, 1, "pairs-test")
    fitted = get_method("probe").fit(task, RunContext(seed=0, work_dir=tmp_path))
    assert (fitted.predict(test.texts) == np.array(test.labels)).mean() >= 0.9
    firsts = FewShotTask("firsts", LABELS, TextDataset(tuple(t.split(PAIR_SEPARATOR)[0] for t in task.labelled.texts),
                                                       task.labelled.labels, LABELS, "firsts"), seed=0)
    alone = get_method("probe").fit(firsts, RunContext(seed=0, work_dir=tmp_path))
    first_texts = [t.split(PAIR_SEPARATOR)[0] for t in test.texts]
    assert (alone.predict(first_texts) == np.array(test.labels)).mean() <= 0.7


def test_setfit_refuses_pairs_and_says_what_to_use(tmp_path):
    with pytest.raises(MethodConfigError, match="setfit embeds one sentence per example.*probe, lora, full"):
        get_method("setfit").fit(_task(), RunContext(seed=0, work_dir=tmp_path))


def test_predict_takes_tuples_and_refuses_a_bare_string(tiny_bert_dir, tmp_path):
    fitted = get_method("probe").fit(_task(), RunContext(model=tiny_bert_dir, seed=0, work_dir=tmp_path))
    with pytest.raises(TypeError, match="texts is one string"):
        fitted.predict_proba("a text")
    with pytest.raises(TypeError, match=r"a text or a \(text, text_pair\) pair"):
        fitted.predict([("a", "b", "c")])
    with pytest.raises(ValueError, match="1 of 2 examples are pairs"):
        fitted.predict([("a", "b"), "c"])


def test_train_and_predict_pairs_from_the_command_line(tiny_bert_dir, tmp_path, capsys):
    rows = [{"text": t.split(PAIR_SEPARATOR)[0], "text_pair": t.split(PAIR_SEPARATOR)[1], "label": LABELS[y]}
            for t, y in zip(_task().labelled.texts, _task().labelled.labels)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "probe"
    assert main(["train", "--method", "probe", "--data", str(data), "--model", str(tiny_bert_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", str(out), "--model", str(tiny_bert_dir), "--json", "--text", "we talked",
                 "--text-pair", "it was about baking"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["text"], record["text_pair"]) == ("we talked", "it was about baking") and record["label"] in LABELS
    for args, message in (
            (["--text", "we talked"], "trained on pairs of texts; give each --text its --text-pair"),
            (["--text", "a", "--text-pair", "b", "--text-pair", "c"], "1 --text but 2 --text-pair"),
    ):
        assert main(["predict", str(out), "--model", str(tiny_bert_dir), *args]) == 2
        assert message in capsys.readouterr().err
    single = write_jsonl(tmp_path / "single.jsonl", [{"text": r["text"], "label": r["label"]} for r in rows])
    assert main(["train", "--method", "probe", "--data", str(data), "--eval", str(single), "--model", str(tiny_bert_dir),
                 "--out", str(tmp_path / "other")]) == 2
    assert "single.jsonl holds single texts but the training data" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # refused before anything was written
