"""Build tasks unlike the shared sentiment datasets, from them, to see how the defaults carry over.

The defaults (budgets, learning rates, TwinTurbo's weights) were chosen on sentiment tasks of short
sentences. The product is also used on other tasks, so the benchmark runs on two derived ones:

- ``corpus3``: which corpus a sentence comes from (cr product reviews, mpqa opinion phrases, mr movie
  snippets): 3 classes of style and topic, not polarity. Training pool: the three training pools; test:
  600 sentences of each test split. ``--dev N`` also holds N training sentences per class out as a dev
  split (``dev.jsonl``), for choosing settings without the test split.
- ``longdocs``: mr's sentiment, but each example is 6 sentences of the same label joined (about 130
  tokens, past the budgets' 128-token cut), from mr's training pool and test split separately.
- ``claims`` (when the folder has sst2): a pair task. Each sst2 sentence (``text``) comes with a claim about
  it (``text_pair``: "the reviewer liked the film", "the film is criticised", ... ; polarity and wording
  drawn at random), labelled ``entailment`` when the claim matches the sentence's sentiment and
  ``contradiction`` when not. Neither text alone says the label: a method must read both. From sst2's
  train, dev and test splits, each sentence once.

Usage: ``python scripts/derived_tasks.py --data-dir ../shared/data --out /tmp/derived [--dev 300]``, then
``hf-lowdata bench --data-dir /tmp/derived --datasets corpus3,longdocs ...``. The files are built from the
shared data and stay outside the repository.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from hf_lowdata.paths import atomic_write_text

CORPORA = ("cr", "mpqa", "mr")
CORPUS_LABELS = ["product review", "opinion phrase", "movie snippet"]
TEST_PER_CORPUS = 600
SENTENCES_PER_DOCUMENT = 6
#: Claims about a review sentence, by the sentiment they state (0 negative, 1 positive).
CLAIMS = {0: ["the reviewer disliked the film", "this is an unfavourable opinion", "the critic does not recommend it",
              "the film is criticised", "the writer thinks the movie is bad", "the speaker was disappointed"],
          1: ["the reviewer liked the film", "this is a favourable opinion", "the critic recommends it",
              "the film is praised", "the writer thinks the movie is good", "the speaker was pleased"]}
CLAIM_LABELS = ["contradiction", "entailment"]


def read_rows(folder: Path, split: str) -> list[dict]:
    with (folder / f"{split}.jsonl").open() as stream:
        return [json.loads(line) for line in stream if line.strip()]


def write_task(folder: Path, name: str, task: str, label_names: list[str], splits: dict[str, list[dict]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():  # (atomically: a kill leaves no cut-off file a benchmark would read)
        atomic_write_text(folder / f"{split}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    meta = {"name": name, "task": task, "label_names": label_names,
            "sizes": {split: len(rows) for split, rows in splits.items()},
            "source": "derived from the shared data by scripts/derived_tasks.py"}
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1))


def corpus_task(data_dir: Path, rng: random.Random) -> dict[str, list[dict]]:
    """Sentences labelled by the corpus they come from (:data:`CORPORA`)."""
    train = [{"text": r["text"], "label": label} for label, corpus in enumerate(CORPORA)
             for r in read_rows(data_dir / corpus, "train")]
    test = [{"text": r["text"], "label": label} for label, corpus in enumerate(CORPORA)
            for r in rng.sample(read_rows(data_dir / corpus, "test"), TEST_PER_CORPUS)]
    rng.shuffle(train)
    rng.shuffle(test)
    return {"train": train, "test": test}


def hold_out_dev(splits: dict[str, list[dict]], per_class: int, seed: int = 1) -> dict[str, list[dict]]:
    """``per_class`` training examples of each class moved to a ``dev`` split (a fixed draw)."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, row in enumerate(splits["train"]):
        by_label.setdefault(row["label"], []).append(i)
    dev = {i for indices in by_label.values() for i in rng.sample(indices, per_class)}
    rows = splits["train"]
    return {**splits, "train": [r for i, r in enumerate(rows) if i not in dev],
            "dev": [r for i, r in enumerate(rows) if i in dev]}


def documents(rows: list[dict], rng: random.Random, size: int = SENTENCES_PER_DOCUMENT) -> list[dict]:
    """Disjoint groups of ``size`` same-label sentences joined into one example each (a remainder is dropped)."""
    by_label: dict[int, list[str]] = {0: [], 1: []}
    for row in rows:
        by_label.setdefault(int(row["label"]), []).append(row["text"])
    out = []
    for label, texts in by_label.items():
        rng.shuffle(texts)
        out += [{"text": " ".join(texts[i:i + size]), "label": label} for i in range(0, len(texts) - size + 1, size)]
    rng.shuffle(out)
    return out


def claims(rows: list[dict], rng: random.Random) -> list[dict]:
    """Each sentence with one claim of random polarity and wording; the label says whether the claim holds."""
    out = []
    for row in rows:
        stated = rng.randrange(2)
        out.append({"text": row["text"], "text_pair": rng.choice(CLAIMS[stated]),
                    "label": int(stated == int(row["label"]))})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the shared data folder (cr, mpqa, mr)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dev", type=int, default=0, help="corpus3: training sentences per class held out as dev")
    args = parser.parse_args(argv)
    missing = [c for c in CORPORA if not (args.data_dir / c / "train.jsonl").is_file()]
    if missing:
        raise SystemExit(f"{args.data_dir} lacks {', '.join(missing)}: give the shared data folder.")
    rng = random.Random(0)  # one stream for both tasks: the draws BENCHMARKS.md reports
    corpus = corpus_task(args.data_dir, rng)
    mr = args.data_dir / "mr"
    longdocs = {"train": documents(read_rows(mr, "train"), rng), "test": documents(read_rows(mr, "test"), rng)}
    write_task(args.out / "corpus3", "corpus3", "which corpus a sentence is from", CORPUS_LABELS,
               hold_out_dev(corpus, args.dev) if args.dev else corpus)
    write_task(args.out / "longdocs", "longdocs", f"sentiment of {SENTENCES_PER_DOCUMENT}-sentence documents",
               json.loads((mr / "meta.json").read_text())["label_names"], longdocs)
    built = ["corpus3", "longdocs"]
    sst2 = args.data_dir / "sst2"
    if (sst2 / "train.jsonl").is_file():  # its own stream: the draws above stay the ones BENCHMARKS.md reports
        claim_rng = random.Random(2)
        write_task(args.out / "claims", "claims", "does the claim (text_pair) hold for the review sentence (text)",
                   CLAIM_LABELS, {split: claims(read_rows(sst2, split), claim_rng) for split in ("train", "dev", "test")
                                  if (sst2 / f"{split}.jsonl").is_file()})
        built.append("claims")
    else:
        print(f"claims: not built ({sst2} has no train.jsonl)")
    for name in built:
        print(name, json.loads((args.out / name / "meta.json").read_text())["sizes"])


if __name__ == "__main__":
    main()
