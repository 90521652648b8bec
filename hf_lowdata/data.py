"""Few-shot text classification data: loading, validation, deterministic sampling, tokenisation.

Sources: a dataset folder in the shared format (``train.jsonl``, optional ``dev.jsonl``,
``test.jsonl``, ``meta.json`` with ``label_names``), a CSV / TSV / JSONL file, or a
``datasets.Dataset``. Text and label column names are configurable; labels may be ids or names. A
second text column (``text_pair`` by default) makes each example a pair (premise / hypothesis, question /
passage): the two texts travel as one string joined by :data:`PAIR_SEPARATOR`, and :func:`encode_texts`
hands them to the tokenizer as its two segments.

Sampling is deterministic per (data, k, seed) on every machine and in every process: each example
gets a rank ``blake2b(purpose, seed, index, text)`` and the lowest ranks are taken per class. This
needs no RNG state, is independent of Python's hash seed, and gives nested sets (the 8-shot set of a
seed is inside its 16-shot set). The dev split, the unlabelled pool and label noise use the same
rule with their own ``purpose`` string, so they are disjoint from the labelled set by construction.

Bad input raises :class:`DataError` (a ``ValueError``) whose message names the problem and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import numbers
import os
import re
import threading
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from .models import token_budget

TEXT_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")

#: The column a second text is read from when none is named: the name transformers' tokenizers give the
#: second segment (``tokenizer(text, text_pair)``). With it, each example is a pair of texts.
TEXT_PAIR_COLUMN = "text_pair"
#: Joins the two texts of a pair into the one string an example is everywhere else (sampling, overlap checks,
#: feature caches, fingerprints), so pairs need no second code path; :func:`encode_texts` splits it again and
#: the tokenizer encodes the two as segments (``[CLS] a [SEP] b [SEP]`` for BERT, with its token type ids).
#: U+001F (unit separator) is a control character that tokenizers drop; a text file's own U+001F is read as
#: a space.
PAIR_SEPARATOR = "\x1f"


class DataError(ValueError):
    """Input data that cannot be used as it is; the message says what is wrong and how to fix it."""


class DataWarning(UserWarning):
    """Data that can be used but probably is not what was meant (e.g. test texts seen in training)."""


@dataclass(frozen=True)
class TextDataset:
    """Texts with integer labels (or none, for an unlabelled pool) and the names of the labels.

    ``labels[i]`` indexes ``label_names``. ``source`` says where the data came from, for messages.
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...] | None
    label_names: tuple[str, ...]
    source: str = ""
    #: How the file's labels were read against declared names: "names", "ids" or "either" (both
    #: readings agree); ``None`` when not read from labelled records.
    label_reading: str | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.texts):
            raise DataError(f"{self.source}: {len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @cached_property
    def pairs(self) -> bool:
        """Whether the examples are text pairs (each text holds :data:`PAIR_SEPARATOR`); a mix is an error."""
        return split_pairs(self.texts, self.source)[1] is not None

    def subset(self, indices: Iterable[int], source: str | None = None) -> TextDataset:
        idx = list(indices)
        return TextDataset(
            texts=tuple(self.texts[i] for i in idx),
            labels=None if self.labels is None else tuple(self.labels[i] for i in idx),
            label_names=self.label_names,
            source=self.source if source is None else source,
        )

    def without_labels(self) -> TextDataset:
        return TextDataset(self.texts, None, self.label_names, f"{self.source} (labels removed)")

    def class_counts(self) -> dict[str, int]:
        """Examples per label name, in label order (zeros included)."""
        counts = Counter(self.labels or ())
        return {name: counts.get(i, 0) for i, name in enumerate(self.label_names)}

    def to_hf(self):
        """A ``datasets.Dataset`` with columns ``text`` and (when labelled) ``label``; a pair's texts stay joined
        by :data:`PAIR_SEPARATOR` (:func:`tokenize` splits them)."""
        import datasets

        columns: dict[str, list[Any]] = {"text": list(self.texts)}
        if self.labels is not None:
            columns["label"] = list(self.labels)
        return datasets.Dataset.from_dict(columns)


@dataclass(frozen=True)
class DatasetSplits:
    """A named data set: the training pool, the test split, an optional official dev split."""

    name: str
    label_names: tuple[str, ...]
    train: TextDataset
    test: TextDataset | None = None
    dev: TextDataset | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: Whether ``label_names`` were declared (meta.json, a ``ClassLabel``, ``label_names=``), so that
    #: labels may be ids into them, or only found in the training labels.
    declared_label_names: bool = False

    @property
    def label_reading(self) -> str:
        """How further labelled files of this data set are read (see :func:`examples_from_rows`): the way its
        training split was read, so that a split lacking a class is never read the other way."""
        if not self.declared_label_names:
            return "names"
        return self.train.label_reading or "either"


@dataclass(frozen=True)
class FewShotTask:
    """Everything one few-shot run sees: the labelled set and, optionally, dev, unlabelled and test.

    ``k`` is the number of labelled examples per class (``None`` when a total ``n`` was drawn).
    ``noisy_indices`` lists labelled examples whose label was replaced by label-noise injection.
    ``excluded_from_pool`` counts pool examples never drawn because their text is in ``exclude_texts``.
    """

    name: str
    label_names: tuple[str, ...]
    labelled: TextDataset
    seed: int
    k: int | None = None
    n: int | None = None
    dev: TextDataset | None = None
    unlabelled: TextDataset | None = None
    test: TextDataset | None = None
    label_noise: float = 0.0
    noisy_indices: tuple[int, ...] = ()
    excluded_from_pool: int = 0

    def __post_init__(self) -> None:
        for part in (self.dev, self.unlabelled, self.test):
            if part is not None:
                check_same_kind(self.labelled, part)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# --------------------------------------------------------------------------------------------------
# Loading


def load_data(
    source: str | os.PathLike | Any,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    name: str | None = None,
    empty_text: str = "error",
    text_pair_column: str | None = TEXT_PAIR_COLUMN,
) -> DatasetSplits:
    """Load a dataset folder, a CSV/TSV/JSONL file, or a ``datasets.Dataset`` / ``DatasetDict``.

    A single file or ``Dataset`` becomes the training pool (no test split). Column names and label
    names may be given; otherwise ``text``/``label`` and the labels found in the data are used.
    ``empty_text="drop"`` drops rows with empty text (with a :class:`DataWarning` naming them)
    instead of raising; public corpora have a few (cr and mpqa in the shared data).
    ``text_pair_column``: the second text of pair examples; the default ``text_pair`` is used where the data
    have that column (otherwise the examples are single texts), another name must exist, ``None`` ignores it.
    """
    try:
        import datasets

        hf_types: tuple[type, ...] = (datasets.Dataset, datasets.DatasetDict)
    except ImportError:  # pragma: no cover - datasets is a dependency
        hf_types = ()
    if hf_types and isinstance(source, hf_types):
        return from_hf_dataset(source, text_column, label_column, label_names, name=name, empty_text=empty_text,
                               text_pair_column=text_pair_column)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"Data path {path} does not exist. Pass a dataset folder or a .csv/.tsv/.jsonl file.")
    if path.is_dir():
        return load_folder(path, text_column=text_column, label_column=label_column, name=name, empty_text=empty_text,
                           text_pair_column=text_pair_column)
    split = load_file(path, text_column, label_column, label_names=label_names, empty_text=empty_text,
                      text_pair_column=text_pair_column)
    return DatasetSplits(name=name or path.stem, label_names=split.label_names, train=split,
                         declared_label_names=label_names is not None)


def load_folder(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    name: str | None = None,
    empty_text: str = "error",
    text_pair_column: str | None = TEXT_PAIR_COLUMN,
) -> DatasetSplits:
    """A folder in the shared format: ``train``, optional ``dev`` and ``test`` files, ``meta.json``."""
    folder = Path(path).expanduser()
    meta: dict[str, Any] = {}
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{meta_path} is not valid JSON ({err}). Fix or delete it.") from err
    names = [str(n) for n in meta["label_names"]] if meta.get("label_names") else None
    declared = bool(names)
    # the train split is read first; the other splits the same way (by names, or by ids into meta.json's list)
    reading = "either" if declared else "names"
    splits: dict[str, TextDataset] = {}
    for split in ("train", "dev", "test"):
        found = [folder / f"{split}{suffix}" for suffix in TEXT_FILE_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
        if len(found) > 1:
            raise DataError(f"{folder} has several {split} files ({', '.join(p.name for p in found)}); keep one.")
        if found:
            splits[split] = load_file(found[0], text_column, label_column, label_names=names, empty_text=empty_text,
                                      label_reading=reading, text_pair_column=text_pair_column)
            names = names or list(splits[split].label_names)
            if split == "train" and declared:
                reading = splits[split].label_reading or reading
    if "train" not in splits:
        raise DataError(
            f"{folder} has no train file. A dataset folder needs train.jsonl (or .csv/.tsv), and optionally "
            "dev.* and test.* and a meta.json with label_names."
        )
    label_names = tuple(names or splits["train"].label_names)
    # Files loaded before the label set was known (train without meta) are re-checked against it.
    for split, data in splits.items():
        if data.label_names != label_names:
            splits[split] = load_file(data.source, text_column, label_column, label_names=label_names,
                                      empty_text=empty_text, label_reading=reading, text_pair_column=text_pair_column)
    for data in splits.values():
        check_same_kind(splits["train"], data)
    return DatasetSplits(
        name=name or meta.get("name") or folder.name,
        label_names=label_names,
        train=splits["train"],
        dev=splits.get("dev"),
        test=splits.get("test"),
        meta=meta,
        declared_label_names=declared,
    )


def load_file(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str | None = "label",
    label_names: Sequence[str] | None = None,
    max_rows: int | None = None,
    empty_text: str = "error",
    label_reading: str = "either",
    text_pair_column: str | None = TEXT_PAIR_COLUMN,
) -> TextDataset:
    """Read a CSV, TSV or JSONL file. ``label_column=None`` reads an unlabelled file.

    ``label_reading``: how labels are read against ``label_names``; ``text_pair_column``: the second text of
    pair examples (see :func:`examples_from_rows`).
    """
    file = Path(path).expanduser()
    rows = read_rows(file, max_rows=max_rows)
    return examples_from_rows(rows, str(file), text_column, label_column, label_names, empty_text=empty_text,
                              label_reading=label_reading, text_pair_column=text_pair_column)


def read_rows(file: Path, max_rows: int | None = None) -> list[dict[str, Any]]:
    """The file's records as dicts; clear errors for missing files, folders, unknown formats, bad encodings,
    bad JSON and column names given twice."""
    if not file.exists():
        raise DataError(f"{file} does not exist. Check the path; pass an existing .csv, .tsv or .jsonl file.")
    if file.is_dir():
        raise DataError(f"{file} is a folder, not a file. Pass a .csv, .tsv or .jsonl file (a dataset folder is "
                        "read by --data only).")
    suffix = file.suffix.lower()
    if suffix not in TEXT_FILE_SUFFIXES:
        raise DataError(f"{file}: unsupported file type {suffix!r}. Use .csv, .tsv or .jsonl.")
    try:
        raw = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{file} is not UTF-8 text (byte {err.start}: {err.reason}). Save it as UTF-8 and try again."
        ) from err
    if not raw.strip():
        raise DataError(f"{file} is empty. It needs a header (CSV/TSV) or one JSON object per line (JSONL).")
    rows: list[dict[str, Any]] = []
    if suffix in (".jsonl", ".json"):
        stripped = raw.lstrip()
        if suffix == ".json" and stripped.startswith("["):
            try:
                data = json.loads(raw, object_pairs_hook=_unique_keys)
            except json.JSONDecodeError as err:
                raise DataError(f"{file}: invalid JSON ({err}).") from err
            except _DuplicateKeysError as err:
                raise DataError(f"{file}: {err}") from None
            rows = list(data)
        else:
            # line breaks only: str.splitlines() also breaks at U+2028, U+2029 and U+0085, which JSON strings
            # may hold unescaped (json.dumps(ensure_ascii=False) and pandas write them so); a raw CR cannot be in one
            for line_no, line in enumerate(re.split(r"\r\n|\r|\n", raw), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line, object_pairs_hook=_unique_keys))
                except json.JSONDecodeError as err:
                    raise DataError(
                        f"{file}, line {line_no}: not valid JSON ({err.msg}). Each line must be one object like "
                        '{"text": "...", "label": 0}.'
                    ) from err
                except _DuplicateKeysError as err:
                    raise DataError(f"{file}, line {line_no}: {err}") from None
                if max_rows is not None and len(rows) > max_rows:
                    break
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DataError(f"{file}, record {i + 1}: expected a JSON object, got {type(row).__name__}.")
    else:
        delimiter = "\t" if suffix == ".tsv" else ","
        try:
            rows = _read_delimited(file, raw, delimiter, max_rows, csv.QUOTE_MINIMAL)
        except csv.Error as err:
            if "field larger than field limit" in str(err):  # not a quoting problem, and no reading fixes it
                raise DataError(f"{file}, near line {err.line}: a text is too long to read ({err.reason}). Shorten it, "
                                "or save the file as JSONL, which has no such limit.") from err
            if delimiter == "\t":  # many TSV exports do not quote: a text may start with a quote
                try:
                    rows = _read_delimited(file, raw, delimiter, max_rows, csv.QUOTE_NONE)
                except csv.Error:
                    rows = []
                if any(isinstance(v, str) and len(v) > 1 and v[0] == v[-1] == '"' for r in rows for v in r.values()):
                    rows = []  # it does quote fields (one is wholly quoted): the parse error is a real one
                if rows:
                    warnings.warn(f"{file}: not a quoted TSV, so quotes are read as part of the text.", DataWarning,
                                  stacklevel=3)
            if not rows:
                raise DataError(f"{file}, near line {err.line}: not valid {suffix[1:].upper()} ({err.reason}). Check "
                                'for an unbalanced quote ("): a field that contains quotes must be quoted and its '
                                "quotes doubled.") from err
    if max_rows is not None and len(rows) > max_rows:
        raise DataError(f"{file} has more than {max_rows} rows; the limit here is {max_rows}.")
    if not rows:
        raise DataError(f"{file} has a header but no rows.")
    return rows


class _DuplicateKeysError(DataError):
    """A JSON object that names a key twice (:func:`read_rows` adds the file and line)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook``: the object as a dict, refusing a key given twice (json keeps the
    last value of a duplicated key without a word, so a second ``text`` would replace the first)."""
    counts = Counter(key for key, _ in pairs)
    twice = [key for key, count in counts.items() if count > 1]
    if twice:
        raise _DuplicateKeysError(f"the object names {', '.join(map(repr, twice))} more than once, and only one "
                                  "value could be read. Rename or remove the duplicated key(s).")
    return dict(pairs)


def _duplicate_columns(header: Sequence[str]) -> list[str]:
    """Column names a header gives more than once (compared as read: without surrounding spaces)."""
    counts = Counter(name.strip() for name in header)
    return [name for name, count in counts.items() if count > 1]


class _CsvError(csv.Error):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line, self.reason = line, reason


#: ``csv.field_size_limit`` is process-wide: it is changed only under this lock, and put back.
_CSV_LIMIT_LOCK = threading.Lock()


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """Let Python's csv read fields of up to ``limit`` characters (its default, 131,072, guards streamed input:
    a file with one longer text was refused as if it had an unbalanced quote), then restore the limit."""
    with _CSV_LIMIT_LOCK:
        previous = csv.field_size_limit()
        csv.field_size_limit(max(previous, min(limit, 2**31 - 1)))  # a C long: 32 bits on Windows
        try:
            yield
        finally:
            csv.field_size_limit(previous)


def _read_delimited(file: Path, raw: str, delimiter: str, max_rows: int | None, quoting: int) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV text; a parse error becomes a ``csv.Error`` with the 1-based line it is on."""
    # newline="": quoted fields may span lines; strict: an unbalanced quote is an error, not a swallowed file
    reader = csv.DictReader(io.StringIO(raw, newline=""), delimiter=delimiter, strict=True, quoting=quoting)
    rows: list[dict[str, Any]] = []
    with _csv_field_limit(len(raw) + 1):  # no field is longer than the whole text
        try:
            if not reader.fieldnames:
                raise DataError(f"{file} has no header row. The first line must name the columns, e.g. text,label.")
            if delimiter == "," and len(reader.fieldnames) == 1 and "\t" in reader.fieldnames[0]:
                raise DataError(f"{file} looks tab-separated (header {reader.fieldnames[0]!r}) but is named "
                                f"{file.suffix}: rename it to .tsv, or save it with commas.")
            if delimiter == "\t" and len(reader.fieldnames) == 1 and "," in reader.fieldnames[0]:
                raise DataError(f"{file} looks comma-separated (header {reader.fieldnames[0]!r}) but is named "
                                f"{file.suffix}: rename it to .csv, or save it with tabs.")
            twice = _duplicate_columns(reader.fieldnames)
            if twice:  # DictReader keeps the last of them without a word
                raise DataError(f"{file}: the header {delimiter.join(reader.fieldnames)!r} names column(s) "
                                f"{', '.join(map(repr, twice))} more than once, and only one of each could be read. "
                                "Rename or remove the duplicated column(s).")
            for row in reader:
                if quoting == csv.QUOTE_NONE and (None in row or None in row.values()):
                    raise _CsvError(reader.line_num, "a row with another number of fields than the header")
                extra = row.pop(None, None)  # DictReader's restkey: the fields past the header's, else dropped unseen
                if extra and any(isinstance(v, str) and v.strip() for v in extra):
                    raise DataError(_extra_fields_message(file, len(rows) + 1, reader.line_num, reader.fieldnames,
                                                          [*row.values(), *extra], delimiter))
                rows.append({k.strip() if isinstance(k, str) else k: v for k, v in row.items()})
                if max_rows is not None and len(rows) > max_rows:
                    break
        except _CsvError:
            raise
        except csv.Error as err:  # the reader has not counted the line it failed on yet
            raise _CsvError(reader.line_num + 1, str(err)) from err
    return rows


def _extra_fields_message(file: Path, row: int, line: int, header: Sequence[str], fields: Sequence[Any],
                           delimiter: str) -> str:
    """A row with more fields than the header: a text holding an unquoted delimiter, cut at it."""
    shown = delimiter.join(str(f) for f in fields)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    name, example = ("comma", ' ("I loved it, the cast is great")') if delimiter == "," else ("tab", "")
    return (f"{file}, row {row} (line {line}): {len(fields)} fields but the header {delimiter.join(header)!r} has "
            f"{len(header)}: a field holds an unquoted {name}, so the row would be cut there ({shown!r}). Put a field "
            f"that contains a {name} in double quotes{example}; spreadsheets and csv.writer do so.")


def examples_from_rows(
    rows: Sequence[dict[str, Any]],
    source: str,
    text_column: str = "text",
    label_column: str | None = "label",
    label_names: Sequence[str] | None = None,
    empty_text: str = "error",
    label_reading: str = "either",
    text_pair_column: str | None = TEXT_PAIR_COLUMN,
) -> TextDataset:
    """Validate records and turn them into a :class:`TextDataset`.

    ``empty_text``: ``"error"`` (default) raises on empty or non-text rows; ``"drop"`` drops rows
    whose text is an empty string, with a :class:`DataWarning` (non-text values still raise).
    With ``label_names``, ``label_reading`` says how labels are read: ``"either"`` (declared names: ids
    into them or the names themselves, decided for the file as a whole), ``"names"`` (the labels of
    training data: every label must be one of them) or ``"ids"`` (as the training split was read).
    ``text_pair_column``: the column of each example's second text (pair tasks). The default, ``text_pair``, is
    read where the rows have it and otherwise the examples are single texts; another name must be a column;
    ``None`` reads single texts. A pair's two texts are joined by :data:`PAIR_SEPARATOR`.
    """
    if empty_text not in ("error", "drop"):
        raise ValueError(f"empty_text must be 'error' or 'drop', got {empty_text!r}")
    if text_column == label_column:
        raise DataError(f"{source}: the text column and the label column are both {text_column!r}, so the labels "
                        "would be trained on as texts. Name two different columns (--text-column / --label-column, "
                        "or text_column= / label_column=).")
    columns = list(rows[0].keys()) if rows else []
    if text_pair_column == TEXT_PAIR_COLUMN and (TEXT_PAIR_COLUMN in (text_column, label_column)
                                                 or not any(TEXT_PAIR_COLUMN in row for row in rows)):
        text_pair_column = None  # the default applies where the rows have the column, for nothing else
    if text_pair_column is not None and text_pair_column in (text_column, label_column):
        raise DataError(f"{source}: the second text column of pairs is {text_pair_column!r}, which is also the "
                        f"{'text' if text_pair_column == text_column else 'label'} column. Name three different "
                        "columns (--text-column / --text-pair-column / --label-column).")
    for column, flag in ((text_column, "text"), (label_column, "label"), (text_pair_column, "text-pair")):
        if column is not None and not any(column in row for row in rows):
            raise DataError(
                f"{source} has no column {column!r}. Columns found: {columns}. Name the right one with "
                f"--{flag}-column (hf-lowdata train / predict) or {flag.replace('-', '_')}_column= (Python), or "
                f"rename the column to {column!r} (a benchmark dataset folder uses 'text' and 'label'"
                f"{', and text_pair for pairs' if flag != 'label' else ''}).{_pair_columns_hint(columns)}"
            )
    text_columns = (text_column,) if text_pair_column is None else (text_column, text_pair_column)
    if empty_text == "drop":
        empty = [i for i, row in enumerate(rows)
                 if any(isinstance(row.get(c), str) and not row[c].strip() for c in text_columns)]
        if empty:
            warnings.warn(
                f"{source}: dropped {len(empty)} row(s) with empty text (rows {', '.join(str(i + 1) for i in empty[:10])}).",
                DataWarning,
                stacklevel=3,
            )
            dropped = set(empty)
            rows = [r for i, r in enumerate(rows) if i not in dropped]
            if not rows:
                raise DataError(f"{source}: every row has empty text.")
    for column in text_columns:
        values = [row.get(column) for row in rows]
        bad = [i for i, t in enumerate(values) if not isinstance(t, str) or not t.strip()]
        if bad:
            shown = ", ".join(f"row {i + 1} ({_describe(values[i])})" for i in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise DataError(
                f"{source}: {len(bad)} row(s) have an empty or non-text {column!r}: {shown}{more}. "
                f"Every example needs a non-empty string{' in both texts of a pair' if len(text_columns) > 1 else ''}; "
                "remove or fill these rows."
            )
    texts = tuple(join_pair(*(row[c] for c in text_columns)) for row in rows)
    if label_column is None:
        return TextDataset(texts, None, tuple(label_names or ()), source)
    raw_labels = [row.get(label_column) for row in rows]
    labels, names, reading = _encode_labels(raw_labels, source, label_column, label_names, label_reading)
    data = TextDataset(texts, tuple(labels), tuple(names), source, label_reading=reading)
    for note in duplicate_notes(data):
        warnings.warn(note, DataWarning, stacklevel=3)
    return data


#: Column names of pair data sets (GLUE, SNLI, SQuAD-style), for the hint of a missing text column.
_KNOWN_PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
                       ("question", "sentence"), ("question", "passage"), ("query", "document"))


def _pair_columns_hint(columns: Sequence[str]) -> str:
    for first, second in _KNOWN_PAIR_COLUMNS:
        if first in columns and second in columns:
            return (f" For pairs of texts name both columns: --text-column {first} --text-pair-column {second} "
                    f"(text_column={first!r}, text_pair_column={second!r} in Python).")
    return ""


def join_pair(*parts: str) -> str:
    """One example's text: a single text, or the two texts of a pair joined by :data:`PAIR_SEPARATOR`. Each part
    is stripped, and a U+001F inside it becomes a space (tokenizers drop that control character anyway)."""
    if len(parts) not in (1, 2):
        raise ValueError(f"an example is one text or a pair of two, not {len(parts)}")
    return PAIR_SEPARATOR.join(part.replace(PAIR_SEPARATOR, " ").strip() for part in parts)


def as_example_text(item: str | Sequence[str]) -> str:
    """What :meth:`FittedClassifier.predict` accepts per example, as the one string the package passes around: a
    text, or a pair given as ``(text, text_pair)`` (already joined texts pass unchanged)."""
    if isinstance(item, str):
        return item
    if isinstance(item, Sequence) and len(item) == 2 and all(isinstance(part, str) for part in item):
        return join_pair(*item)
    raise TypeError(f"an example is a text or a (text, text_pair) pair of strings, not {_describe(item)}")


def split_pairs(texts: Sequence[str], source: str = "") -> tuple[list[str], list[str] | None]:
    """The tokenizer's two arguments for ``texts``: ``(texts, None)`` for single texts, ``(firsts, seconds)`` when
    every text is a pair. A mix of both is an error: a model reads one kind."""
    parts = [text.split(PAIR_SEPARATOR, 1) for text in texts]
    paired = sum(len(p) == 2 for p in parts)
    if paired == 0:
        return list(texts), None
    if paired < len(parts):
        where = f"{source}: " if source else ""
        raise DataError(f"{where}{paired} of {len(parts)} examples are pairs of texts and the others single texts. "
                        "Give every example a second text (a text_pair column), or none.")
    return [p[0] for p in parts], [p[1] for p in parts]


def encode_texts(tokenizer: Any, texts: Sequence[str], **kwargs: Any) -> Any:
    """``tokenizer(texts, **kwargs)``, with pairs given as the tokenizer's two segments (``text_pair``).

    A tokenizer without a template for pairs (GPT-2's adds no token between them: ``plays guitarsomeone``) gets
    the second text led by its separator or end-of-text token (else a line break). It still takes the two as a
    pair, so truncation cuts the longer text, as with a template; only a tokenizer that would then give the
    second text segment ids its model may not have (``token_type_ids`` among its inputs) gets each pair as one
    joined text, whose truncation cuts the end of the second text."""
    firsts, seconds = split_pairs(texts)
    if seconds is None:
        return tokenizer(firsts, **kwargs)
    if tokenizer.num_special_tokens_to_add(pair=True) > tokenizer.num_special_tokens_to_add(pair=False):
        return tokenizer(firsts, seconds, **kwargs)
    joiner = getattr(tokenizer, "sep_token", None) or getattr(tokenizer, "eos_token", None)
    led = [f"{joiner} {second}" if joiner else f"\n{second}" for second in seconds]
    if "token_type_ids" not in getattr(tokenizer, "model_input_names", ()):
        return tokenizer(firsts, led, **kwargs)
    space = " " if joiner else ""
    return tokenizer([first + space + second for first, second in zip(firsts, led)], **kwargs)


def texts_and_parts(texts: Iterable[str]) -> list[str]:
    """Each text and, for a pair, each of its two texts too: what a held-out check compares, since a corpus holds
    a pair's premise as a text of its own (every sst2 sentence is a text of sst5, and a premise of a pair task
    built from it)."""
    return [piece for text in texts
            for piece in ([text, *text.split(PAIR_SEPARATOR)] if PAIR_SEPARATOR in text else [text])]


def shown_text(text: str, limit: int = 60) -> str:
    """An example as a message shows it: cut to ``limit`` characters, a pair's two texts joined by `` || ``."""
    return text.replace(PAIR_SEPARATOR, " || ")[:limit]


def check_same_kind(train: TextDataset, other: TextDataset) -> None:
    """Data a model trained on pairs predicts (or learns from) must be pairs too, and single texts single texts."""
    if len(train) and len(other) and train.pairs != other.pairs:
        kinds = {True: "pairs of texts (a text_pair column)", False: "single texts"}
        raise DataError(f"{other.source or 'these data'} holds {kinds[other.pairs]} but the training data "
                        f"{train.source!r} holds {kinds[train.pairs]}. A model reads one kind: give both files the "
                        "same columns.")


def duplicate_notes(data: TextDataset) -> list[str]:
    """What is suspicious about repeated texts: texts labelled twice differently (with a few labels each,
    one such pair is a large share of the signal) and exact duplicate rows (they count twice in training).

    Conflicts compare texts by :func:`normalize_text`, the key the splits use (``Great!`` and ``great``
    labelled differently are one conflict, as the demo's held-out split treats them).
    """
    texts, labels, names = data.texts, data.labels or (), data.label_names
    seen: dict[str, set[int]] = {}
    first: dict[str, str] = {}
    for text, label in zip(texts, labels):
        key = normalize_text(text)
        seen.setdefault(key, set()).add(label)
        first.setdefault(key, text)
    notes = []
    conflicting = [key for key, ls in seen.items() if len(ls) > 1]
    if conflicting:
        example = first[conflicting[0]]
        shown = ", ".join(names[i] for i in sorted(seen[conflicting[0]]))
        notes.append(f"{data.source}: {len(conflicting)} text(s) carry different labels, e.g. {shown_text(example)!r}: "
                     f"{shown}. Check these labels: the same text cannot teach two classes.")
    duplicates = sum(n - 1 for n in Counter(zip(texts, labels)).values() if n > 1)
    if duplicates:
        notes.append(f"{data.source}: {duplicates} row(s) repeat an earlier row (same text and label); each copy "
                     "counts in training. Remove them unless the weighting is meant.")
    return notes


#: Largest over smallest class count from which :func:`balance_note` speaks: a round threshold above the
#: skew of ordinary sentiment sets (the shared ones stay below 2.3 : 1), where a head trained on plain
#: cross-entropy starts to learn the prior instead of the classes.
UNEVEN_CLASS_RATIO = 3.0


def balance_note(data: TextDataset) -> str | None:
    """A note when the labelled classes are uneven (the largest :data:`UNEVEN_CLASS_RATIO` times the smallest or
    more), else ``None``. With 40 examples of one class and 4 of each other, full fine-tuning, LoRA, FTP and TPGM
    put 99-100% of their predictions on the large class (macro-F1 0.07-0.09), silently; weighting the classes
    (``class_weight=balanced``) does not change that at 10 : 1 with 4 examples (SST-2 dev, BENCHMARKS.md)."""
    counts = {name: n for name, n in data.class_counts().items() if n}
    if len(counts) < 2:
        return None
    big = max(counts, key=counts.__getitem__)
    small = min(counts, key=counts.__getitem__)
    if counts[big] < UNEVEN_CLASS_RATIO * counts[small]:
        return None
    return (f"{data.source}: the classes are uneven: {big!r} has {counts[big]} examples, {small!r} only "
            f"{counts[small]}. Methods trained on the plain loss learn that prior and may predict mostly {big!r} (the "
            "probe weights classes to balance; the others do with the setting class_weight=balanced, which helps "
            "macro-F1 at some cost in accuracy). Judge them by macro-F1 and per class, or balance the labelled set "
            "(train --shots K draws K per class).")


def _describe(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        return "empty"
    return f"a {type(value).__name__}"


#: An integer as text, also as a CSV writes an integral float (pandas writes a float column 1.0, 0.0).
_INTEGER_TEXT = re.compile(r"-?[0-9]+(?:\.0*)?")


def _as_int(value: Any) -> int | None:
    """The integer a label is: an int, an integral float (JSON ``1.0``) or the text of one (``"1"``,
    ``"1.0"``: CSV cannot tell them apart); ``None`` for anything else (``0.5`` and ``"0.5"`` included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):  # int and numpy's integers
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return int(number) if number.is_integer() else None
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        return int(value.strip().split(".")[0])
    return None


def _is_int_like(value: Any) -> bool:
    return _as_int(value) is not None


def _label_name(value: Any) -> str:
    """A raw label as a class name: integers without a decimal point (``1``, ``1.0`` and ``"1.0"`` are ``"1"``),
    strings stripped."""
    number = _as_int(value)
    if number is not None:
        return str(number)
    return value.strip() if isinstance(value, str) else str(value)


def _name_index(names: Sequence[str]) -> dict[str, int]:
    """Label name -> id, also under each name's :func:`_label_name` (a label ``1`` finds a declared name ``"1.0"``)."""
    index = {n: i for i, n in enumerate(names)}
    for i, n in enumerate(names):
        index.setdefault(_label_name(n), i)
    return index


def _find_name(value: Any, index: dict[str, int]) -> int | None:
    """The id of the name a raw label is: written as it is (``"01"``, ``"1.0"``), else as :func:`_label_name`."""
    text = value.strip() if isinstance(value, str) else str(value)
    return index[text] if text in index else index.get(_label_name(value))


def _score_like_note(values: Sequence[int], source: str, column: str) -> str | None:
    """A note when integer labels look like a numeric score rather than class ids: at least 10 different values,
    most of them on a single row (a 0-100 rating column), and gaps between them (class ids 0..K-1 or 1..K of a
    one-example-per-class file are not a score). Each value would be trained as a class of its own."""
    counts = Counter(values)
    single = sum(1 for c in counts.values() if c == 1)
    contiguous = max(counts) - min(counts) + 1 == len(counts) and min(counts) in (0, 1)
    if len(counts) < 10 or single <= len(counts) / 2 or contiguous:
        return None
    return (f"{source}: its {column!r} values are {len(counts)} different integers ({min(counts)} to {max(counts)}), "
            f"{single} of them on a single row; each value is trained as a class of its own. If they are scores or "
            "measurements (hf_lowdata classifies, it does not regress), bin them into a few classes first, e.g. "
            "low / medium / high.")


def _encode_labels(
    raw: Sequence[Any], source: str, column: str, label_names: Sequence[str] | None, reading: str = "either"
) -> tuple[list[int], list[str], str | None]:
    """Label ids, label names, and how the labels were read (``"names"``, ``"ids"``, ``"either"``).

    With declared ``label_names`` (meta.json, a ``ClassLabel``, ``label_names=``) labels may be ids into
    them or the names themselves (``reading="either"``); training data's names must be used as names
    (``"names"``); a split of a data set whose train split gave ids is read as ids (``"ids"``). A file is
    read one way as a whole, never row by row: mixing the two readings merged classes (ids 0 and 1
    both became the name "1" of a 1..5 star scale).
    """
    if reading not in ("either", "names", "ids"):
        raise ValueError(f"label_reading must be 'either', 'names' or 'ids', got {reading!r}")
    missing = [i for i, v in enumerate(raw) if v is None or (isinstance(v, str) and not v.strip())
               or (isinstance(v, float) and math.isnan(v))]
    if missing:
        rows = ", ".join(str(i + 1) for i in missing[:5])
        raise DataError(f"{source}: {len(missing)} row(s) have no {column!r} value (rows {rows}...). Label every row.")
    odd = [i for i, v in enumerate(raw) if isinstance(v, (list, tuple, dict, set))
           or (isinstance(v, numbers.Real) and not isinstance(v, bool) and not _is_int_like(v))]
    if odd:
        value = raw[odd[0]]
        raise DataError(
            f"{source}, row {odd[0] + 1}: label {value!r} is not a class ({len(odd)} such row(s)). Each row needs "
            "exactly one class label, a name or an integer id: multi-label and regression targets are not supported."
        )
    if label_names is None:
        if all(_is_int_like(v) for v in raw):
            as_ints = [n for v in raw if (n := _as_int(v)) is not None]  # every one is
            ids = sorted(set(as_ints))
            note = _score_like_note(as_ints, source, column)
            if note:
                warnings.warn(note, DataWarning, stacklevel=5)
            if ids[0] == 0 and ids == list(range(len(ids))):
                return as_ints, [str(i) for i in ids], None
            remap = {v: i for i, v in enumerate(ids)}
            return [remap[v] for v in as_ints], [str(v) for v in ids], None
        values = [_label_name(v) for v in raw]
        names = sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        return [index[v] for v in values], names, None
    names = [str(n) for n in label_names]
    index = _name_index(names)
    by_name = [_find_name(v, index) for v in raw]
    by_id = [d if (d := _as_int(v)) is not None and 0 <= d < len(names) else None for v in raw]
    names_fit = reading != "ids" and None not in by_name
    ids_fit = reading != "names" and None not in by_id
    if names_fit and ids_fit:
        if by_name == by_id:
            return by_name, names, "either"
        warnings.warn(
            f"{source}: its {column!r} values can be read as label names or as ids into {names}, and the two "
            "readings differ; they are read as ids (index into label_names, the dataset-folder format). Write the "
            "names themselves if that is not what they are.", DataWarning, stacklevel=4)
        return by_id, names, "ids"
    if names_fit or ids_fit:
        return (by_name, names, "names") if names_fit else (by_id, names, "ids")
    if reading == "either":
        unreadable = [i for i, (n, d) in enumerate(zip(by_name, by_id)) if n is None and d is None]
        if not unreadable:  # every row fits one of the readings, but neither fits every row
            an_id, a_name = by_name.index(None), by_id.index(None)
            raise DataError(
                f"{source}: row {an_id + 1}'s label {raw[an_id]!r} is an id and row {a_name + 1}'s {raw[a_name]!r} a "
                f"name of {names}: write every label of a file the same way (all ids 0..{len(names) - 1} or all names)."
            )
        hint = (f"neither one of the label names {names} nor an id 0..{len(names) - 1} into them. Fix the row, or "
                "add the class to label_names (meta.json for a dataset folder)")
    elif reading == "names":
        unreadable = [i for i, n in enumerate(by_name) if n is None]
        hint = (f"not one of the training labels {names}: every evaluated label must be one the model was trained "
                "on. Fix or remove the row")
    else:
        unreadable = [i for i, d in enumerate(by_id) if d is None]
        hint = (f"not an id 0..{len(names) - 1} into the label names {names}, as the training split's labels are. "
                "Write this file's labels the same way")
    bad = unreadable[0]
    raise DataError(f"{source}, row {bad + 1}: label {raw[bad]!r} is {hint} ({len(unreadable)} such row(s)).")


def from_hf_dataset(
    dataset: Any,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    name: str | None = None,
    empty_text: str = "error",
    text_pair_column: str | None = TEXT_PAIR_COLUMN,
) -> DatasetSplits:
    """Wrap a ``datasets.Dataset`` (the training pool) or a ``DatasetDict`` (train/validation/test).

    ``text_pair_column``: as in :func:`examples_from_rows` (``text_pair`` is read where a split has it)."""
    import datasets

    def convert(ds: Any, split: str, names: Sequence[str] | None, reading: str) -> TextDataset:
        default_unused = TEXT_PAIR_COLUMN not in ds.column_names or TEXT_PAIR_COLUMN in (text_column, label_column)
        pair = None if text_pair_column == TEXT_PAIR_COLUMN and default_unused else text_pair_column
        for column in (text_column, label_column, pair):
            if column is not None and column not in ds.column_names:
                raise DataError(
                    f"Dataset split {split!r} has no column {column!r}. Columns: {ds.column_names}. "
                    f"Pass text_column= / label_column= / text_pair_column=.{_pair_columns_hint(ds.column_names)}"
                )
        columns = [c for c in (text_column, pair, label_column) if c is not None]
        rows = [dict(zip(columns, values)) for values in zip(*(ds[c] for c in columns))]
        if not rows:
            raise DataError(f"Dataset split {split!r} is empty.")
        return examples_from_rows(rows, f"datasets.Dataset[{split}]", text_column, label_column, names, empty_text,
                                  label_reading=reading, text_pair_column=pair)

    def declared_names(ds: Any) -> Sequence[str] | None:
        feature = ds.features.get(label_column)
        return label_names or (feature.names if isinstance(feature, datasets.ClassLabel) else None)

    train_ds = dataset["train"] if isinstance(dataset, datasets.DatasetDict) else dataset
    if isinstance(dataset, datasets.DatasetDict) and "train" not in dataset:
        raise DataError(f"DatasetDict has no 'train' split (splits: {list(dataset)}).")
    declared = declared_names(train_ds) is not None
    train = convert(train_ds, "train", declared_names(train_ds), "either")
    if not isinstance(dataset, datasets.DatasetDict):
        return DatasetSplits(name or getattr(dataset, "builder_name", None) or "dataset", train.label_names, train,
                             declared_label_names=declared)
    # the other splits are read with the training split's names, the way its labels were read
    reading = (train.label_reading or "either") if declared else "names"
    others = {key: convert(dataset[key], key, train.label_names, reading)
              for key in ("validation", "dev", "test") if key in dataset}
    for other in others.values():
        check_same_kind(train, other)
    return DatasetSplits(name or "dataset", train.label_names, train, test=others.get("test"),
                         dev=others.get("validation", others.get("dev")), declared_label_names=declared)


# --------------------------------------------------------------------------------------------------
# Deterministic sampling


def example_rank(purpose: str, seed: int, index: int, text: str) -> int:
    """The sampling key of one example: a 64-bit blake2b digest, stable on every machine."""
    digest = hashlib.blake2b(f"{purpose}\x1f{seed}\x1f{index}\x1f{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranked_indices(data: TextDataset, purpose: str, seed: int, candidates: Iterable[int] | None = None) -> list[int]:
    """Indices of ``data`` (or of ``candidates``) sorted by :func:`example_rank`."""
    pool = range(len(data)) if candidates is None else candidates
    return sorted(pool, key=lambda i: example_rank(purpose, seed, i, data.texts[i]))


def require_two_classes(data: TextDataset) -> None:
    counts = {n: c for n, c in data.class_counts().items() if c > 0}
    if len(counts) < 2:
        found = ", ".join(f"{n!r} ({c} examples)" for n, c in counts.items()) or "none"
        raise DataError(
            f"{data.source or 'The data'} has fewer than two classes with examples (found: {found}). "
            "Classification needs examples of at least two labels."
        )


def sample_per_class(
    data: TextDataset, k: int, seed: int, exclude: Iterable[int] = (), purpose: str = "labelled"
) -> list[int]:
    """``k`` examples of every class, deterministic per (data, k, seed); sorted by class then rank."""
    if data.labels is None:
        raise DataError(f"{data.source}: cannot draw labelled examples from unlabelled data.")
    if k < 1:
        raise DataError(f"k must be at least 1, got {k}.")
    require_two_classes(data)
    excluded = set(exclude)
    chosen: list[int] = []
    short: list[str] = []
    for label, name in enumerate(data.label_names):
        candidates = [i for i, y in enumerate(data.labels) if y == label and i not in excluded]
        if len(candidates) < k:
            short.append(f"{name!r} has {len(candidates)}")
            continue
        chosen.extend(ranked_indices(data, f"{purpose}:{label}", seed, candidates)[:k])
    if short:
        raise DataError(
            f"{data.source}: fewer than k={k} examples available in some classes ({'; '.join(short)}). "
            "Use a smaller k or add labelled examples to those classes."
        )
    return chosen


def sample_total(data: TextDataset, n: int, seed: int, exclude: Iterable[int] = ()) -> list[int]:
    """``n`` examples in total, stratified by class (largest-remainder quotas), deterministic.

    Every class in the pool gets at least one example: proportional quotas alone can give a rare
    class none, leaving a labelled set that never shows it (or has one class).
    """
    if data.labels is None:
        raise DataError(f"{data.source}: cannot draw labelled examples from unlabelled data.")
    require_two_classes(data)
    excluded = set(exclude)
    by_class = {c: [i for i, y in enumerate(data.labels) if y == c and i not in excluded] for c in range(data.num_labels)}
    available = sum(len(v) for v in by_class.values())
    if n > available:
        raise DataError(f"{data.source}: asked for n={n} labelled examples but only {available} are available.")
    present = [c for c, members in by_class.items() if members]
    if n < len(present):
        raise DataError(f"{data.source}: n={n} labelled examples cannot include each of the {len(present)} classes; "
                        f"draw at least n={len(present)}, or k per class instead.")
    exact = {c: n * len(v) / available for c, v in by_class.items()}
    quota = {c: int(math.floor(q)) for c, q in exact.items()}
    for c in sorted(exact, key=lambda c: (quota[c] - exact[c], c))[: n - sum(quota.values())]:
        quota[c] += 1
    for c in present:  # a rare class still gets one example, taken from the largest quota (other draws unchanged)
        if quota[c] == 0:
            quota[max(quota, key=lambda d: (quota[d], -d))] -= 1
            quota[c] = 1
    chosen: list[int] = []
    for c, members in by_class.items():
        chosen.extend(ranked_indices(data, f"total:{c}", seed, members)[: quota[c]])
    return chosen


def inject_label_noise(data: TextDataset, fraction: float, seed: int) -> tuple[TextDataset, tuple[int, ...]]:
    """Give ``round(fraction * len)`` examples a different label, chosen deterministically.

    The wrong label is drawn uniformly from the other classes. Returns the new data and the indices
    whose label changed.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"label noise must be in [0, 1), got {fraction}.")
    if data.labels is None or fraction == 0.0:
        return data, ()
    count = int(round(fraction * len(data)))
    flipped = sorted(ranked_indices(data, "noise", seed)[:count])
    labels = list(data.labels)
    k = data.num_labels
    for i in flipped:
        offset = 1 + example_rank("noise-label", seed, i, data.texts[i]) % (k - 1)
        labels[i] = (labels[i] + offset) % k
    return replace(data, labels=tuple(labels), source=f"{data.source} (+{fraction:.0%} label noise)"), tuple(flipped)


#: ``dev_k`` value for a dev set as large per class as the labelled set (the benchmark protocol's rule).
DEV_K_SAME = "same"


def make_few_shot_task(
    splits: DatasetSplits,
    seed: int,
    k: int | None = None,
    n: int | None = None,
    dev_k: int | str | None = None,
    unlabelled: int = 0,
    label_noise: float = 0.0,
    warn_on_overlap: bool = True,
    exclude_texts: Iterable[str] = (),
) -> FewShotTask:
    """Draw the labelled set (``k`` per class, or ``n`` in total), and optionally a disjoint dev set
    (``dev_k`` per class; :data:`DEV_K_SAME` for ``k``, or ``n`` / classes rounded up, per class), an
    unlabelled pool of up to ``unlabelled`` texts, and label noise.

    ``exclude_texts``: pool examples whose text (compared by :func:`normalize_text`) is among these
    are never drawn, for labelled, dev or unlabelled data. The benchmark passes every test text it
    evaluates on: public pools contain test sentences of other corpora (e.g. the MR pool holds most
    of SST-2's test set) and even of their own (MPQA).
    """
    if (k is None) == (n is None):
        raise DataError("Give exactly one of k (examples per class) or n (examples in total).")
    if dev_k == DEV_K_SAME:
        dev_k = k if k is not None else -(-n // splits.train.num_labels)
    elif isinstance(dev_k, str) or (dev_k is not None and dev_k < 0):
        raise DataError(f"dev_k must be a number of examples per class or {DEV_K_SAME!r}, got {dev_k!r}.")
    pool = splits.train
    excluded = set(excluded_pool_indices(pool, exclude_texts))
    labelled_idx = (sample_per_class(pool, k, seed, exclude=excluded) if k is not None
                    else sample_total(pool, n, seed, exclude=excluded))
    used = set(labelled_idx) | excluded
    dev = None
    if dev_k:  # disjoint by text, not only by index: a repeated row must not score the model on its own example
        copies = excluded_pool_indices(pool, [pool.texts[i] for i in labelled_idx])
        dev_idx = sample_per_class(pool, dev_k, seed, exclude=used | set(copies), purpose="dev")
        used.update(dev_idx)
        dev = pool.subset(dev_idx, source=f"{splits.name} dev ({dev_k}/class, seed {seed})")
    unlabelled_set = None
    if unlabelled:
        rest = [i for i in range(len(pool)) if i not in used]
        unl_idx = ranked_indices(pool, "unlabelled", seed, rest)[:unlabelled]
        unlabelled_set = pool.subset(unl_idx, source=f"{splits.name} unlabelled pool").without_labels()
    shots = f"{k}/class" if k is not None else f"n={n}"
    labelled = pool.subset(labelled_idx, source=f"{splits.name} labelled ({shots}, seed {seed})")
    labelled, noisy = inject_label_noise(labelled, label_noise, seed)
    if warn_on_overlap and splits.test is not None:
        warn_if_test_in_train(labelled, splits.test)
    return FewShotTask(
        name=splits.name,
        label_names=splits.label_names,
        labelled=labelled,
        seed=seed,
        k=k,
        n=n,
        dev=dev,
        unlabelled=unlabelled_set,
        test=splits.test,
        label_noise=label_noise,
        noisy_indices=noisy,
        excluded_from_pool=len(excluded),
    )


def normalize_text(text: str) -> str:
    """The key texts are compared by, for overlap between splits and corpora.

    Public corpora copy each other's sentences with other tokenisation and encoding: SST-2's test
    sentence ``it 's a charming and often affecting journey .`` is ``it's a charming ...`` in MR's
    pool, and SST's ``clichéd`` is MR's ``clich\N{REPLACEMENT CHARACTER}d``. So the key keeps only
    letters and digits, case-folded (NFKC, so full-width forms count as ASCII), and drops Latin
    letters with diacritics (``é``: its copy may have lost it to an encoding error); letters of other
    scripts (Greek, Cyrillic, CJK, ...) are kept, so texts in those scripts are compared in full. A
    text with no letter or digit left (``:-)``) keeps its case-folded, space-normalised form, so such
    texts do not all collide. (A copy with accents stripped, ``cafe`` for ``café``, is not caught;
    texts that differ only in accented letters, French ``près``/``prés``, share a key: in a benchmark
    draw that only keeps an extra text out.) A pair's texts are keyed each on its own, joined by
    :data:`PAIR_SEPARATOR`.
    """
    if PAIR_SEPARATOR in text:  # a pair: each text on its own, so the boundary between them counts
        return PAIR_SEPARATOR.join(normalize_text(part) for part in text.split(PAIR_SEPARATOR, 1))
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())  # so ℍ folds too
    key = "".join(c for c in folded if c.isalnum() and (c.isascii() or not _is_accented_latin(c)))
    return key or " ".join(folded.split())


def _is_accented_latin(char: str) -> bool:
    """A non-ASCII letter whose base letter is ASCII (``é``, ``ñ``): what encoding errors turn into junk."""
    return unicodedata.normalize("NFKD", char)[0].isascii()


def excluded_pool_indices(pool: TextDataset, texts: Iterable[str]) -> list[int]:
    """Indices of ``pool`` whose normalised text is among ``texts``."""
    banned = {normalize_text(t) for t in texts}
    if not banned:
        return []
    return [i for i, t in enumerate(pool.texts) if normalize_text(t) in banned]


def test_in_train_note(train: TextDataset, test: TextDataset) -> str | None:
    """A note when test texts (compared by :func:`normalize_text`) also occur in the training set."""
    seen = {normalize_text(t) for t in train.texts}
    dupes = [t for t in test.texts if normalize_text(t) in seen]
    if not dupes:
        return None
    return (f"{len(dupes)} test example(s) also appear in the training set {train.source!r} (e.g. {shown_text(dupes[0])!r}); "
            "accuracy on them does not measure generalisation. Remove them from one of the two files.")


def warn_if_test_in_train(train: TextDataset, test: TextDataset) -> None:
    """Warn (:class:`DataWarning`) when test texts also occur in the training set."""
    note = test_in_train_note(train, test)
    if note:
        warnings.warn(note, DataWarning, stacklevel=2)


def check_dev_set(dev: TextDataset, labelled: TextDataset, evaluation: TextDataset | None = None) -> None:
    """A dev set chooses among training steps: it needs two classes and may share no text (compared by
    :func:`normalize_text`) with the training data, nor with the evaluation data it would then inflate."""
    require_two_classes(dev)
    for other, role in ((labelled, "training data"), (evaluation, "evaluation data")):
        if other is None:
            continue
        keys = {normalize_text(t) for t in other.texts}
        shared = [t for t in dev.texts if normalize_text(t) in keys]
        if shared:
            raise DataError(
                f"{len(shared)} dev example(s) of {dev.source!r} also appear in the {role} {other.source!r} (e.g. "
                f"{shown_text(shared[0])!r}). Model selection needs examples the model neither trains nor is scored on: "
                "remove them from the dev file."
            )


def check_label_space(train: TextDataset, other: TextDataset) -> None:
    """Out-of-domain evaluation needs the same labels in the same order, and the same kind of example."""
    if tuple(train.label_names) != tuple(other.label_names):
        raise DataError(
            f"Label sets differ: {other.source} has {list(other.label_names)}, the training data has "
            f"{list(train.label_names)}. Out-of-domain evaluation needs the same labels in the same order."
        )
    check_same_kind(train, other)


# --------------------------------------------------------------------------------------------------
# Tokenisation


def tokenize(data: TextDataset, tokenizer: Any, max_length: int = 128):
    """A ``datasets.Dataset`` of ``input_ids``/``attention_mask`` (+ ``labels``), unpadded.

    Padding happens per batch (dynamic padding) in :func:`collator`.
    """
    ds = data.to_hf()
    ds = ds.map(
        lambda batch: encode_texts(tokenizer, batch["text"], truncation=True,
                                   max_length=token_budget(tokenizer, max_length)),
        batched=True,
        remove_columns=["text"],
        load_from_cache_file=False,
        keep_in_memory=True,
    )
    if "label" in ds.column_names:
        ds = ds.rename_column("label", "labels")
    return ds


def collator(tokenizer: Any, pad_to_multiple_of: int | None = None):
    """Dynamic padding to the longest sequence of each batch."""
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
