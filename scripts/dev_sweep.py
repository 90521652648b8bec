"""Sweep a method's settings (learning rate, FTP's mu / kappa, TwinTurbo's loss weights, ...) on official *dev* splits, never on test.

``scripts/tune_budgets.py`` varies learning rates only; method settings are ``--config`` options,
so this script takes a grid of ``key=v1,v2`` pairs (``lr`` is the learning rate; any other key is a
``--config`` setting: a budget field such as ``max_steps``, or an option of the method; a key the
method does not read is refused before any training) and scores every combination on ``dev.jsonl``
with the k-shot sets the benchmark draws (plus an unlabelled pool of ``--unlabelled`` texts for
semi-supervised methods). Each run gets ``--data-dir`` as the benchmark's data dir, so SparseExpert
holds out every text of the evaluated dataset (its dev split included) from meta-training and uses
the adapter the benchmark caches. Examples (about 30 s per run on a quiet 2-core CPU):

    python scripts/dev_sweep.py --data-dir ../shared/data --datasets sst2,sst5 --k 16 --seeds 0,1,2 \\
        --method ftp --grid lr=5e-5,1e-4,2e-4 mu=1e-2,1e-1 --out runs/ftp_dev_sweep.json
    python scripts/dev_sweep.py --data-dir ../shared/data --datasets sst2,sst5 --k 8 --seeds 0,1,2 \\
        --method twin_turbo --unlabelled 2000 --grid latent_weight=0,0.03,0.1 --out runs/tt_dev_sweep.json

Uneven labelled sets (class weighting): ``--total N`` draws N examples by class frequency, as the
benchmark's ``--totals``; ``--uneven R`` keeps every drawn example of the first class and 1/R (rounded up)
of each other class's (``--k 40 --uneven 10``: 40 against 4). Rows record dev macro-F1 beside accuracy.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from transformers import set_seed

from hf_lowdata.bench.measure import macro_f1
from hf_lowdata.bench.report import format_mean_std
from hf_lowdata.bench.runner import quiet_libraries
from hf_lowdata.data import DataError, DatasetSplits, FewShotTask, load_data, make_few_shot_task
from hf_lowdata.methods import MethodConfigError, RunContext, SharedCache, get_method
from hf_lowdata.methods.sparse_expert import BENCH_DATA_DIR_OPTION
from hf_lowdata.paths import atomic_write_text
from hf_lowdata.workflow import BUDGET_FIELDS, WorkflowError, check_config, resolve_budget

#: The grid's short name for the budget's learning rate.
LR = "lr"


def parse_grid(pairs: list[str]) -> list[dict[str, int | float | str]]:
    """``["lr=1e-4,5e-5", "norm=mars,l2"]`` -> every combination as a dict (numbers where they parse)."""

    def value(text: str) -> int | float | str:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    keys, values = [], []
    for pair in pairs:
        key, _, listed = pair.partition("=")
        if not listed:
            raise SystemExit(f"--grid entries look like key=v1,v2; got {pair!r}")
        keys.append(key)
        values.append([value(v) for v in listed.split(",")])
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def config_of(setting: Mapping[str, Any]) -> dict[str, Any]:
    """A grid setting as ``--config`` (``lr`` is the budget's ``learning_rate``)."""
    return {("learning_rate" if key == LR else key): value for key, value in setting.items()}


def check_grid(method: str, grid: Sequence[Mapping[str, Any]], data_dir: Path | None = None) -> None:
    """Fail before any training on a grid key ``method`` does not read (with the CLI's "did you mean"),
    a budget value it cannot take, or an option value it refuses (``data_dir``: where SparseExpert's
    sources are looked for, as in :func:`run_context`)."""
    folder = {BENCH_DATA_DIR_OPTION: str(data_dir)} if data_dir is not None else None
    for setting in grid:
        try:
            check_config([method], config=config_of(setting), run_options=folder)
        except (WorkflowError, MethodConfigError, DataError) as err:
            raise SystemExit(f"--grid {' '.join(f'{k}={v}' for k, v in setting.items())}: {err}") from None


def run_context(method: str, setting: Mapping[str, Any], data_dir: Path, *, seed: int, work_dir: Path,
                cache: SharedCache, model: str | None = None) -> RunContext:
    """The context a benchmark run of ``method`` under ``setting`` gets: budget fields (``max_steps``,
    ``lr``, ...) change the budget, other keys are method options, and ``data_dir`` is the benchmark's
    data dir (SparseExpert then never meta-trains on a text of the evaluated dataset, dev split included)."""
    config = config_of(setting)
    budget, options = resolve_budget(method, config=config)
    changed = bool(set(config) & set(BUDGET_FIELDS))  # as hf-lowdata train: else each method its own budget
    return RunContext(model=model, seed=seed, budget=budget if changed else None, work_dir=work_dir, cache=cache,
                      options={BENCH_DATA_DIR_OPTION: str(data_dir), **options}, quiet=True)


def dev_splits(data_dir: Path, dataset: str) -> DatasetSplits:
    """The dataset's splits; it must have an official dev split (the sweep never scores on test)."""
    splits = load_data(data_dir / dataset, empty_text="drop")
    if splits.dev is None:
        raise SystemExit(f"{dataset} has no official dev split; sweep on datasets that have one (sst2, sst5).")
    return splits


def uneven(task: FewShotTask, ratio: int) -> FewShotTask:
    """``task`` with every labelled example of class 0 and the first ceil(n_c / ratio) of each other class's."""
    labels = list(task.labelled.labels)
    kept, seen = [], dict.fromkeys(range(task.num_labels), 0)
    for i, y in enumerate(labels):
        quota = labels.count(y) if y == 0 else -(-labels.count(y) // ratio)
        if seen[y] < quota:
            kept.append(i)
            seen[y] += 1
    return replace(task, labelled=task.labelled.subset(kept, source=f"{task.labelled.source} (uneven 1:{ratio})"))


def score_on_dev(method: str, setting: Mapping[str, Any], splits: DatasetSplits, data_dir: Path, *, seed: int,
                 k: int | None, cache: SharedCache, unlabelled: int = 0, model: str | None = None,
                 total: int | None = None, uneven_ratio: int = 1) -> tuple[float, float, float | None]:
    """Dev accuracy and macro-F1 of ``method`` under ``setting`` trained on the draw of ``seed`` (``k`` per
    class or ``total`` by class frequency, then :func:`uneven` by ``uneven_ratio``), and its median step seconds.
    The draw, as the benchmark's, never holds a test text, nor a dev text (that would score the model on one of
    its own training examples)."""
    assert splits.dev is not None and splits.dev.labels is not None
    held_out = [*splits.dev.texts, *(splits.test.texts if splits.test is not None else ())]
    task = make_few_shot_task(splits, seed=seed, k=None if total else k, n=total, unlabelled=unlabelled,
                              warn_on_overlap=False, exclude_texts=held_out)
    if uneven_ratio > 1:
        task = uneven(task, uneven_ratio)
    set_seed(seed)
    with tempfile.TemporaryDirectory() as work:
        ctx = run_context(method, setting, data_dir, seed=seed, work_dir=Path(work), cache=cache, model=model)
        fitted = get_method(method).fit(task, ctx)
        predictions = fitted.predict(splits.dev.texts)
        accuracy = float((predictions == np.array(splits.dev.labels)).mean())
        f1 = macro_f1(list(splits.dev.labels), list(predictions), task.num_labels)
    return accuracy, f1, fitted.train_step_seconds


def write_rows(out: Path, rows: list[dict[str, Any]]) -> None:
    """The rows so far as JSON, atomically (a kill leaves the last complete file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(rows, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--datasets", default="sst2,sst5")
    parser.add_argument("--method", default="ftp")
    parser.add_argument("--model", default=None, help="model name or folder (default: the packaged MiniLM)")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--total", type=int, default=None, help="N examples by class frequency (instead of --k)")
    parser.add_argument("--uneven", type=int, default=1, help="keep class 0 whole and 1/R of every other class")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--unlabelled", type=int, default=0, help="unlabelled pool size (semi-supervised methods)")
    parser.add_argument("--grid", nargs="+", required=True,
                        help="key=v1,v2 ... (lr = learning rate; budget fields such as max_steps; method options)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    try:
        get_method(args.method)
    except (KeyError, RuntimeError) as err:
        raise SystemExit(str(err.args[0] if err.args else err)) from None
    check_grid(args.method, grid, args.data_dir)
    datasets = args.datasets.split(",")
    all_splits = {dataset: dev_splits(args.data_dir, dataset) for dataset in datasets}
    quiet_libraries()
    cache, rows = SharedCache(), []
    for dataset, splits in all_splits.items():
        for setting in grid:
            for seed in map(int, args.seeds.split(",")):
                accuracy, f1, step_seconds = score_on_dev(
                    args.method, setting, splits, args.data_dir, seed=seed, k=args.k, cache=cache,
                    unlabelled=args.unlabelled, model=args.model, total=args.total, uneven_ratio=args.uneven)
                draw = {"total": args.total} if args.total else {"k": args.k}
                rows.append({"dataset": dataset, "method": args.method, **setting, "seed": seed, **draw,
                             "uneven": args.uneven, "unlabelled": args.unlabelled, "dev_accuracy": accuracy,
                             "dev_macro_f1": f1, "step_seconds": step_seconds})
                print(json.dumps(rows[-1]), flush=True)
                write_rows(args.out, rows)
    keys = list(grid[0])
    print(f"\n| dataset | {' | '.join(keys)} | dev accuracy | dev macro-F1 |\n|---|{'---|' * len(keys)}---|---|")
    for dataset in datasets:
        for setting in grid:
            chosen = [r for r in rows if r["dataset"] == dataset and all(r[k] == v for k, v in setting.items())]
            print(f"| {dataset} | {' | '.join(str(setting[k]) for k in keys)} | "
                  f"{format_mean_std([r['dev_accuracy'] for r in chosen])} | "
                  f"{format_mean_std([r['dev_macro_f1'] for r in chosen])} |")


if __name__ == "__main__":
    main()
