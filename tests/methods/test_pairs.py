"""Pair tasks (premise / hypothesis): every method reads both texts, as the model's two segments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_lowdata.cli import main
from hf_lowdata.data import PAIR_SEPARATOR, DataError, FewShotTask, TextDataset, join_pair
from hf_lowdata.methods import METHODS, FittedClassifier, RunContext, get_method
from hf_lowdata.methods.base import MethodConfigError
from hf_lowdata.workflow import load_classifier, train_method
from tests.cli.outputs import tiny_config
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


@pytest.fixture
def segments(monkeypatch):
    """The token type ids BERT's embeddings receive, per call: the second segment of a pair is marked 1 only when
    the tokenizer was given the two texts apart (a joined string is one segment of zeros)."""
    from transformers.models.bert.modeling_bert import BertEmbeddings

    seen: list[set[int]] = []
    forward = BertEmbeddings.forward

    def recording(self, input_ids=None, token_type_ids=None, *args, **kwargs):
        seen.append(set(token_type_ids.unique().tolist()) if token_type_ids is not None else set())
        return forward(self, input_ids, token_type_ids, *args, **kwargs)

    monkeypatch.setattr(BertEmbeddings, "forward", recording)
    return seen


@pytest.mark.parametrize("method", PAIR_METHODS)
def test_a_method_trains_saves_and_predicts_pairs(method, tiny_bert_dir, tmp_path, segments):
    task = _task()
    evaluation = _pairs(8, 3, "pairs-eval")
    result = train_method(method, task, tmp_path / method, model=str(tiny_bert_dir), config=tiny_config(method),
                          evaluation_data=evaluation)
    assert result.evaluation.examples == 8
    card = (tmp_path / method / "README.md").read_text()
    assert "text_pairs: true" in card and "pairs of texts (text, text_pair)" in card
    # training and evaluation read two segments (meta-training reads its single-text source corpora too)
    on_pairs = [ids == {0, 1} for ids in segments]
    assert on_pairs and (any if getattr(METHODS[method], "meta_tune", False) else all)(on_pairs), segments
    segments.clear()
    loaded = load_classifier(tmp_path / method, model=tiny_bert_dir)
    as_tuples = [tuple(text.split(PAIR_SEPARATOR)) for text in evaluation.texts]
    np.testing.assert_allclose(loaded.predict_proba(as_tuples), result.classifier.predict_proba(evaluation.texts),
                               atol=1e-5)
    assert segments and all(ids == {0, 1} for ids in segments), segments
    with pytest.raises(DataError, match="trained on pairs of texts: give both texts of each example"):
        loaded.predict(["a man plays the guitar"])  # the loaded classifier knows it reads pairs
    with pytest.raises(DataError, match="trained on pairs of texts"):
        result.classifier.predict(["a man plays the guitar"])  # and so does the fitted one


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
    fitted.predict([("we met at noon", "it was about a tennis final")])  # cached now: a mix is still refused
    with pytest.raises(ValueError, match="1 of 2 examples are pairs"):
        fitted.predict([("we met at noon", "it was about a tennis final"), "c"])


def test_a_subclass_keeps_its_own_predict_proba_signature():
    class Constant(FittedClassifier):
        label_names = ("a", "b")
        trainable_parameters = 0

        def predict_proba(self, texts):  # no use_cache: predict() still works, and receives joined pairs
            self.seen = list(texts)
            return np.tile([0.25, 0.75], (len(texts), 1))

        def save(self, directory):
            raise NotImplementedError

    constant = Constant()
    assert constant.predict([("a", "b")]).tolist() == [1] and constant.seen == [f"a{PAIR_SEPARATOR}b"]


def test_sparse_expert_never_meta_trains_on_either_text_of_an_evaluated_pair(tmp_path):
    from hf_lowdata.methods.sparse_expert import evaluated_texts

    held = evaluated_texts(_task(), RunContext(seed=0, work_dir=tmp_path))
    first, second = _task().labelled.texts[0].split(PAIR_SEPARATOR)
    assert {first, second, _task().labelled.texts[0]} <= set(held)  # a premise is a single text in a source corpus


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
            (["--text", "we talked"], "trained on pairs of texts: give both texts of each example"),
            (["--text", "a", "--text-pair", "b", "--text-pair", "c"], "1 --text but 2 --text-pair"),
    ):
        assert main(["predict", str(out), "--model", str(tiny_bert_dir), *args]) == 2
        assert message in capsys.readouterr().err
    single = write_jsonl(tmp_path / "single.jsonl", [{"text": r["text"], "label": r["label"]} for r in rows])
    assert main(["train", "--method", "probe", "--data", str(data), "--eval", str(single), "--model", str(tiny_bert_dir),
                 "--out", str(tmp_path / "other")]) == 2
    assert "single.jsonl holds single texts but the training data" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()  # refused before anything was written
