"""The episodic sampler: deterministic N-way k-shot episodes, varying way and shot, held-out exclusion."""

from __future__ import annotations

import pytest
import torch

from hf_lowdata.data import DataError, TextDataset, normalize_text
from hf_lowdata.models import load_tokenizer
from hf_lowdata.training.episodes import EpisodeDataset, TextSource


def _five_class(n_per_class=20) -> TextDataset:
    texts, labels = [], []
    for c in range(5):
        for i in range(n_per_class):
            texts.append(f"class {c} sentence number {i}")
            labels.append(c)
    return TextDataset(tuple(texts), tuple(labels), tuple(f"c{c}" for c in range(5)), "five")


def _binary(n=30) -> TextDataset:
    return TextDataset(tuple(f"binary text {i}" for i in range(n)), tuple(i % 2 for i in range(n)), ("n", "p"), "bin")


@pytest.fixture(scope="module")
def tok(tiny_bert_dir):
    return load_tokenizer(tiny_bert_dir)


def test_episodes_are_a_pure_function_of_seed_and_index(tok):
    sources = [TextSource(_five_class(), tok, name="five"), TextSource(_binary(), tok, name="bin")]
    a = EpisodeDataset(sources, 50, seed=3)
    b = EpisodeDataset(sources, 50, seed=3)
    forward = [a.episode(i) for i in range(50)]
    backward = [b.episode(i) for i in reversed(range(50))][::-1]
    assert forward == backward
    assert EpisodeDataset(sources, 50, seed=4).episode(7) != forward[7]
    item_a, item_b = a[11], b[11]
    for key in ("support_labels", "query_labels", "support_ids", "query_ids"):
        assert torch.equal(item_a[key], item_b[key])
    assert torch.equal(item_a["support"]["input_ids"], item_b["support"]["input_ids"])


def test_way_and_shot_vary_within_limits_and_labels_are_episode_local(tok):
    data = EpisodeDataset([TextSource(_five_class(), tok, name="five")], 200, seed=0, way=(2, 5), shot=(1, 4),
                          query_per_class=3)
    ways, shots = set(), set()
    for i in range(200):
        ep = data.episode(i)
        shot = len(ep.support) // ep.way
        ways.add(ep.way)
        shots.add(shot)
        assert sorted(set(ep.support_labels)) == list(range(ep.way))
        assert ep.support_labels == tuple(c for c in range(ep.way) for _ in range(shot))
        assert len(ep.query) == 3 * ep.way
        assert not set(ep.support) & set(ep.query)
        true = [data.sources[0].labels[j] for j in ep.support]
        assert [ep.classes[y] for y in ep.support_labels] == true  # relabelled consistently
    assert ways == {2, 3, 4, 5} and shots == {1, 2, 3, 4}


def test_binary_source_caps_the_way(tok):
    data = EpisodeDataset([TextSource(_binary(), tok, name="bin")], 20, way=(2, 5), query_per_class=2)
    assert all(data.episode(i).way == 2 for i in range(20))


def test_items_are_padded_batches(tok):
    item = EpisodeDataset([TextSource(_binary(), tok, name="bin")], 3, shot=(2, 2), query_per_class=2)[0]
    assert item["support"]["input_ids"].shape[0] == 4 and item["query"]["attention_mask"].shape[0] == 4
    assert item["support_labels"].tolist() == [0, 0, 1, 1]


def test_excluded_texts_are_never_drawn(tok):
    data = _binary(40)
    excluded = [t.upper() + " !" for t in data.texts[:10]]  # matched after normalisation
    source = TextSource(data, tok, name="bin", exclude_texts=excluded)
    assert source.excluded == 10 and len(source.data) == 30
    banned = {normalize_text(t) for t in excluded}
    episodes = EpisodeDataset([source], 30, query_per_class=2)
    for i in range(30):
        ep = episodes.episode(i)
        assert not {normalize_text(source.data.texts[j]) for j in ep.support + ep.query} & banned


def test_bad_episode_settings_raise_clear_errors(tok):
    source = TextSource(_binary(6), tok, name="bin")
    with pytest.raises(DataError, match="fewer than two classes with 9 examples"):
        EpisodeDataset([source], 5, shot=(1, 1), query_per_class=8)
    with pytest.raises(DataError, match="at least one labelled source"):
        EpisodeDataset([], 5)
    with pytest.raises(ValueError, match="way must be"):
        EpisodeDataset([source], 5, way=(1, 3), query_per_class=1)
    with pytest.raises(ValueError, match="shot must be"):
        EpisodeDataset([source], 5, shot=(0, 3), query_per_class=1)
    with pytest.raises(DataError, match="need labelled data"):
        TextSource(_binary().without_labels(), tok)
    with pytest.raises(IndexError):
        EpisodeDataset([source], 5, shot=(1, 1), query_per_class=1).episode(5)


def test_a_repeated_text_is_kept_once_and_never_both_support_and_query(tok):
    """Source pools repeat texts (MPQA: 'denied', 'support'; some with both labels): an episode could query a copy of
    one of its own support examples, and conflicting copies taught contradictory labels."""
    base = _binary(20)
    texts = list(base.texts) + [base.texts[0].upper()] * 5 + [base.texts[1]] * 3 + ["mixed text"] * 4
    labels = list(base.labels) + [base.labels[0]] * 5 + [base.labels[1]] * 3 + [0, 1, 0, 1]
    source = TextSource(TextDataset(tuple(texts), tuple(labels), base.label_names, "rep"), tok, name="rep")
    keys = [normalize_text(t) for t in source.data.texts]
    assert len(keys) == len(set(keys)) == 20 and normalize_text("mixed text") not in keys
    assert (source.duplicates, source.conflicting, source.excluded) == (8, 4, 0)
    assert list(source.data.texts) == list(base.texts)  # the first copy of each text, in order
    episodes = EpisodeDataset([source], 40, shot=(1, 4), query_per_class=4)
    for i in range(40):
        ep = episodes.episode(i)
        support = {normalize_text(source.data.texts[j]) for j in ep.support}
        assert not support & {normalize_text(source.data.texts[j]) for j in ep.query}


def test_a_source_with_label_names_instead_of_indices_says_so(tok):
    class NamedLabels:
        name, labels, num_labels = "named", ["pos", "neg"] * 10, 2

        def encode(self, indices):  # pragma: no cover - never reached
            raise AssertionError

    with pytest.raises(DataError, match="integer class indices.*'pos'"):
        EpisodeDataset([NamedLabels()], 4, shot=(1, 1), query_per_class=1)
