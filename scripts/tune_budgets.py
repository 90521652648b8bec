"""Choose learning rates on official *dev* splits (never test), for hf_lowdata/budgets.py.

For each method and candidate learning rate, train on the k-shot set drawn from the training pool
(the benchmark's own sampler) and score on the dataset's ``dev.jsonl``. Prints a table and writes
the raw scores as JSON. Usage:

    python scripts/tune_budgets.py --data-dir ../shared/data --datasets sst2,sst5 --k 16 --seeds 0,1,2 \
        --grid full:2e-5,5e-5,1e-4 lora:5e-4,1e-3,2e-3 --out runs/tuning.json

A shorthand for ``scripts/dev_sweep.py --grid lr=...`` over several methods at once (the probe's
value is its ``C``); each run is dev_sweep's (the same context, draw and scoring).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dev_sweep  # scripts/dev_sweep.py, beside this file

from hf_lowdata.bench.report import format_mean_std
from hf_lowdata.bench.runner import quiet_libraries
from hf_lowdata.methods import SharedCache


def parse_entries(entries: list[str]) -> list[tuple[str, list[dict[str, float]]]]:
    """``["lora:5e-4,1e-3", "probe:0.1"]`` -> ``[("lora", [{"lr": 5e-4}, {"lr": 1e-3}]), ("probe", [{"C": 0.1}])]``."""
    parsed = []
    for entry in entries:
        method, _, values = entry.partition(":")
        try:
            numbers = [float(v) for v in values.split(",")]
        except ValueError:
            numbers = []
        if not method or not numbers:
            raise SystemExit(f"--grid entries look like method:value,value (e.g. lora:5e-4,1e-3); got {entry!r}")
        key = "C" if method == "probe" else dev_sweep.LR
        parsed.append((method, [{key: v} for v in numbers]))
    return parsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--datasets", default="sst2,sst5")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--grid", nargs="+", required=True, help="method:value,value,... (learning rate; C for probe)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    grid = parse_entries(args.grid)
    for method, settings in grid:
        try:
            dev_sweep.get_method(method)
        except (KeyError, RuntimeError) as err:
            raise SystemExit(str(err.args[0] if err.args else err)) from None
        dev_sweep.check_grid(method, settings, args.data_dir)
    splits = {dataset: dev_sweep.dev_splits(args.data_dir, dataset) for dataset in args.datasets.split(",")}
    quiet_libraries()
    cache = SharedCache()
    results = []
    for dataset, data in splits.items():
        for method, settings in grid:
            for setting in settings:
                for seed in map(int, args.seeds.split(",")):
                    acc, _, _ = dev_sweep.score_on_dev(method, setting, data, args.data_dir, seed=seed, k=args.k,
                                                       cache=cache)
                    value = next(iter(setting.values()))
                    results.append({"dataset": dataset, "method": method, "value": value, "seed": seed,
                                    "dev_accuracy": acc})
                    print(json.dumps(results[-1]), flush=True)
                    dev_sweep.write_rows(args.out, results)
    print("\n| dataset | method | value | dev accuracy (mean ± std) |\n|---|---|---|---|")
    keys = sorted({(r["dataset"], r["method"], r["value"]) for r in results})
    for key in keys:
        accs = [r["dev_accuracy"] for r in results if (r["dataset"], r["method"], r["value"]) == key]
        print(f"| {key[0]} | {key[1]} | {key[2]:g} | {format_mean_std(accs)} |")


if __name__ == "__main__":
    main()
