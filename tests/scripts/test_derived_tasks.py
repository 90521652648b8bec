"""scripts/derived_tasks.py: the corpus-identification and long-document tasks built from the shared data."""

from __future__ import annotations

import json

import pytest

from hf_lowdata.data import load_data
from tests.helpers import load_script, toy_sentences, write_jsonl


@pytest.fixture
def shared_like(tmp_path):
    """cr, mpqa and mr folders in the shared format, each with its own sentences."""
    root = tmp_path / "data"
    for seed, name in enumerate(("cr", "mpqa", "mr")):
        (root / name).mkdir(parents=True)
        write_jsonl(root / name / "train.jsonl", [{**r, "text": f"{name} {r['text']}"} for r in toy_sentences(90, seed)])
        write_jsonl(root / name / "test.jsonl",
                    [{**r, "text": f"{name} test {r['text']}"} for r in toy_sentences(620, seed + 10)])
        (root / name / "meta.json").write_text(json.dumps({"name": name, "label_names": ["negative", "positive"]}))
    return root


def test_corpus3_labels_each_sentence_by_its_corpus_and_keeps_dev_apart(shared_like, tmp_path):
    load_script("derived_tasks").main(["--data-dir", str(shared_like), "--out", str(tmp_path / "out"), "--dev", "10"])
    splits = load_data(tmp_path / "out" / "corpus3")
    assert splits.label_names == ("product review", "opinion phrase", "movie snippet")
    for data in (splits.train, splits.dev, splits.test):
        assert all(text.split()[0] == ("cr", "mpqa", "mr")[label] for text, label in zip(data.texts, data.labels))
    assert splits.dev.class_counts() == {name: 10 for name in splits.label_names}
    assert len(splits.train) == 3 * 90 - 30 and not set(splits.train.texts) & set(splits.dev.texts)
    assert splits.test.class_counts() == {name: 600 for name in splits.label_names}
    assert all(" test " in text for text in splits.test.texts)


def test_longdocs_joins_six_sentences_of_one_label_from_one_split(shared_like, tmp_path):
    load_script("derived_tasks").main(["--data-dir", str(shared_like), "--out", str(tmp_path / "out")])
    splits = load_data(tmp_path / "out" / "longdocs")
    assert splits.label_names == ("negative", "positive") and splits.dev is None
    train = {f"mr {r['text']}": r["label"] for r in toy_sentences(90, 2)}  # (mr's toy sentences: seed 2)
    used = []
    for text, label in zip(splits.train.texts, splits.train.labels):
        parts = ["mr the " + part.strip() for part in text.split("mr the ")[1:]]
        assert len(parts) == 6 and {train[part] for part in parts} == {label}
        used += parts
    assert len(used) == len(set(used))  # each sentence in one document at most
    assert len(splits.train) == 2 * (45 // 6) and len(splits.test) == 2 * (310 // 6)
    assert all(text.count(" test ") == 6 for text in splits.test.texts)


def test_a_folder_without_the_corpora_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="lacks cr, mpqa, mr"):
        load_script("derived_tasks").main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])


def test_claims_pairs_each_sentence_with_a_claim_that_holds_or_not(shared_like, tmp_path):
    script = load_script("derived_tasks")
    script.main(["--data-dir", str(shared_like), "--out", str(tmp_path / "without")])
    assert not (tmp_path / "without" / "claims").exists()  # no sst2 folder: the pair task is not built
    (shared_like / "sst2").mkdir()
    rows = {split: toy_sentences(n, seed) for split, n, seed in (("train", 60, 20), ("dev", 20, 21), ("test", 30, 22))}
    for split, split_rows in rows.items():
        write_jsonl(shared_like / "sst2" / f"{split}.jsonl", split_rows)
    script.main(["--data-dir", str(shared_like), "--out", str(tmp_path / "out")])
    splits = load_data(tmp_path / "out" / "claims")
    assert splits.label_names == ("contradiction", "entailment") and splits.train.pairs
    stated = {claim: polarity for polarity, claims in script.CLAIMS.items() for claim in claims}
    for split, data in (("train", splits.train), ("dev", splits.dev), ("test", splits.test)):
        sentiment = {r["text"]: r["label"] for r in rows[split]}
        pairs = [text.split("\x1f") for text in data.texts]
        assert [first for first, _ in pairs] == [r["text"] for r in rows[split]]  # each sentence once, in order
        assert all(label == int(stated[claim] == sentiment[first]) for (first, claim), label in zip(pairs, data.labels))
    assert 0 < sum(splits.train.labels) < len(splits.train)  # both labels occur
    # the earlier tasks' draws do not move when claims is built beside them
    assert (tmp_path / "out" / "corpus3" / "test.jsonl").read_text() == (
        tmp_path / "without" / "corpus3" / "test.jsonl").read_text()
