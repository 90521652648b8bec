"""Episodes for meta-learning: N-way k-shot support and query sets drawn from labelled source data.

:class:`EpisodeDataset` is a ``torch`` dataset whose item ``i`` is episode ``i``: a source, a set of
classes (the *way*), ``shot`` support and ``query_per_class`` query examples per class, relabelled
``0..way-1`` in a random order. Everything is a pure function of ``(seed, i)`` (a blake2b-seeded
``random.Random``), so the same episode comes out in every process and after a resume, whatever was
drawn before. Way and shot vary from episode to episode, within the limits given.

Sources are :class:`EpisodeSource` objects: labels plus a way to turn example indices into model
inputs. :class:`TextSource` wraps a :class:`~hf_lowdata.data.TextDataset` and a tokenizer; other
modalities (images) provide their own ``encode``.

Held-out test texts must never be meta-trained on: ``exclude_texts`` drops every source example
whose :func:`~hf_lowdata.data.normalize_text` key occurs there. This matters with the
shared data: 1,150 of the 1,821 SST-2 test sentences occur in MR's training pool. A text that
occurs more than once in a source is kept once (or dropped, where its copies disagree on the
label), so a query is never a copy of a support example of its own episode: MPQA's pool repeats
706 texts (``'denied'``, ``'support'``), 70 of them with both labels, and about one MPQA episode in
twenty drew a copy of a support text as a query before.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from ..data import DataError, TextDataset, encode_texts, normalize_text
from ..models import token_budget


class EpisodeSource(Protocol):
    """Labelled examples episodes can be drawn from."""

    name: str
    labels: Sequence[int]
    num_labels: int

    def encode(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Model inputs (a padded batch) for the examples ``indices``."""
        ...  # pragma: no cover - protocol


class TextSource:
    """A labelled text dataset as an episode source (tokenised on demand, padded per episode).

    Args:
        data: the labelled pool (e.g. ``load_data(folder).train``).
        tokenizer: the model's tokenizer.
        max_length: tokens per text.
        name: a name for messages and cache keys (default: ``data.source``).
        exclude_texts: texts never to draw (compared after :func:`normalize_text`), e.g. test sets.

    Repeated texts (by :func:`normalize_text`) are kept once, at their first occurrence; a text whose
    copies carry different labels is dropped altogether (``duplicates`` and ``conflicting`` count them).
    """

    def __init__(
        self,
        data: TextDataset,
        tokenizer: Any,
        max_length: int = 128,
        name: str | None = None,
        exclude_texts: Iterable[str] = (),
    ) -> None:
        if data.labels is None:
            raise DataError(f"{data.source}: episodes need labelled data, this dataset has no labels.")
        excluded = {normalize_text(t) for t in exclude_texts}
        keys = [normalize_text(t) for t in data.texts]
        labels_of: dict[str, set[int]] = {}
        for key, label in zip(keys, data.labels):
            labels_of.setdefault(key, set()).add(label)
        keep, seen = [], set()
        for i, key in enumerate(keys):
            if key not in excluded and key not in seen and len(labels_of[key]) == 1:
                keep.append(i)
            seen.add(key)
        self.excluded = sum(key in excluded for key in keys)
        self.conflicting = sum(len(labels_of[key]) > 1 and key not in excluded for key in keys)
        self.duplicates = len(data) - len(keep) - self.excluded - self.conflicting
        self.data = data if len(keep) == len(data) else data.subset(keep)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.name = name or data.source or "source"
        self.labels = self.data.labels or ()
        self.num_labels = data.num_labels

    def encode(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        texts = [self.data.texts[i] for i in indices]
        batch = encode_texts(self.tokenizer, texts, truncation=True,
                             max_length=token_budget(self.tokenizer, self.max_length), padding=True, return_tensors="pt")
        return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


@dataclass(frozen=True)
class Episode:
    """One episode: where its examples come from and their episode labels (0..way-1)."""

    index: int
    source: int
    classes: tuple[int, ...]
    support: tuple[int, ...]
    support_labels: tuple[int, ...]
    query: tuple[int, ...]
    query_labels: tuple[int, ...]

    @property
    def way(self) -> int:
        return len(self.classes)


def usable_classes(labels: Sequence[int], need: int) -> dict[int, list[int]]:
    """The example indices of each class that has at least ``need`` examples (episodes draw from these)."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        try:
            c = int(y)
        except (TypeError, ValueError):
            raise DataError(f"Episode sources need integer class indices as labels, got {y!r}; map label names to "
                            "indices (e.g. names.index(label)) in the source.") from None
        by_class.setdefault(c, []).append(i)
    return {c: idx for c, idx in by_class.items() if len(idx) >= need}


def _episode_rng(seed: int, index: int) -> random.Random:
    digest = hashlib.blake2b(f"episode\x1f{seed}\x1f{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


class EpisodeDataset(Dataset):
    """``num_episodes`` deterministic N-way k-shot episodes over one or more sources.

    Args:
        sources: the labelled sources (:class:`TextSource` or any :class:`EpisodeSource`).
        num_episodes: length of the dataset (optimizer steps x episodes per step for meta-training).
        seed: episodes are a pure function of ``(seed, index)``.
        way: (min, max) classes per episode; capped by the classes a source has.
        shot: (min, max) support examples per class.
        query_per_class: query examples per class.
    """

    def __init__(
        self,
        sources: Sequence[EpisodeSource],
        num_episodes: int,
        seed: int = 0,
        way: tuple[int, int] = (2, 5),
        shot: tuple[int, int] = (1, 8),
        query_per_class: int = 8,
    ) -> None:
        if not sources:
            raise DataError("EpisodeDataset needs at least one labelled source dataset.")
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes}.")
        if not (2 <= way[0] <= way[1]):
            raise ValueError(f"way must be (min, max) with 2 <= min <= max, got {way}.")
        if not (1 <= shot[0] <= shot[1]):
            raise ValueError(f"shot must be (min, max) with 1 <= min <= max, got {shot}.")
        if query_per_class < 1:
            raise ValueError(f"query_per_class must be >= 1, got {query_per_class}.")
        self.sources = list(sources)
        self.num_episodes = num_episodes
        self.seed = seed
        self.way = way
        self.shot = shot
        self.query_per_class = query_per_class
        need = shot[0] + query_per_class
        self._by_class: list[dict[int, list[int]]] = []
        for source in self.sources:
            usable = usable_classes(source.labels, need)
            if len(usable) < 2:
                raise DataError(
                    f"Source {source.name!r} has fewer than two classes with {need} examples (shot {shot[0]} + "
                    f"query {query_per_class}); lower shot/query_per_class or drop this source."
                )
            self._by_class.append(usable)

    def __len__(self) -> int:
        return self.num_episodes

    def episode(self, index: int) -> Episode:
        """The indices and labels of episode ``index`` (no tokenisation)."""
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range (0..{self.num_episodes - 1})")
        rng = _episode_rng(self.seed, index)
        source = rng.randrange(len(self.sources))
        by_class = self._by_class[source]
        shot = rng.randint(*self.shot)
        eligible = sorted(c for c, idx in by_class.items() if len(idx) >= shot + self.query_per_class)
        if len(eligible) < 2:  # a large shot on a small source: fall back to the smallest shot
            shot = self.shot[0]
            eligible = sorted(by_class)
        way = rng.randint(min(self.way[0], len(eligible)), min(self.way[1], len(eligible)))
        classes = rng.sample(eligible, way)
        support, support_labels, query, query_labels = [], [], [], []
        for label, c in enumerate(classes):
            drawn = rng.sample(by_class[c], shot + self.query_per_class)
            support += drawn[:shot]
            support_labels += [label] * shot
            query += drawn[shot:]
            query_labels += [label] * self.query_per_class
        return Episode(index, source, tuple(classes), tuple(support), tuple(support_labels), tuple(query),
                       tuple(query_labels))

    def __getitem__(self, index: int) -> dict[str, Any]:
        ep = self.episode(index)
        src = self.sources[ep.source]
        return {
            "episode_index": torch.tensor(ep.index),
            "source": torch.tensor(ep.source),
            "support": src.encode(ep.support),
            "support_labels": torch.tensor(ep.support_labels),
            "support_ids": torch.tensor(ep.support),
            "query": src.encode(ep.query),
            "query_labels": torch.tensor(ep.query_labels),
            "query_ids": torch.tensor(ep.query),
        }
