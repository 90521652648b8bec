"""Choose learning rates on official *dev* splits (never test), for hf_lowdata/budgets.py.

For each method and candidate learning rate, train on the k-shot set drawn from the training pool
(the benchmark's own sampler) and score on the dataset's ``dev.jsonl``. Prints a table and writes
the raw scores as JSON. Usage:

    python scripts/tune_budgets.py --data-dir ../shared/data --datasets sst2,sst5 --k 16 --seeds 0,1,2 \
        --grid full:2e-5,5e-5,1e-4 lora:5e-4,1e-3,2e-3 --out runs/tuning.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from transformers import set_seed

from hf_lowdata.bench.runner import _quiet_libraries
from hf_lowdata.budgets import get_budget
from hf_lowdata.data import load_data, make_few_shot_task
from hf_lowdata.methods import RunContext, SharedCache, get_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--datasets", default="sst2,sst5")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--grid", nargs="+", required=True, help="method:value,value,... (learning rate; C for probe)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    _quiet_libraries()
    cache = SharedCache()
    results = []
    for dataset in args.datasets.split(","):
        splits = load_data(args.data_dir / dataset, empty_text="drop")
        if splits.dev is None:
            raise SystemExit(f"{dataset} has no official dev split; tune on datasets that have one.")
        for entry in args.grid:
            method, values = entry.split(":")
            for value in map(float, values.split(",")):
                base = get_budget(method)
                budget = (replace(base, options={**base.options, "C": value}) if method == "probe"
                          else replace(base, learning_rate=value))
                for seed in map(int, args.seeds.split(",")):
                    task = make_few_shot_task(splits, seed=seed, k=args.k, warn_on_overlap=False)
                    set_seed(seed)
                    with tempfile.TemporaryDirectory() as work:
                        ctx = RunContext(seed=seed, budget=budget, work_dir=Path(work), cache=cache, quiet=True)
                        fitted = get_method(method).fit(task, ctx)
                        acc = float((fitted.predict(splits.dev.texts) == np.array(splits.dev.labels)).mean())
                    results.append({"dataset": dataset, "method": method, "value": value, "seed": seed, "dev_accuracy": acc})
                    print(json.dumps(results[-1]), flush=True)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(results, indent=1))
    print("\n| dataset | method | value | dev accuracy (mean ± std) |\n|---|---|---|---|")
    keys = sorted({(r["dataset"], r["method"], r["value"]) for r in results})
    for key in keys:
        accs = [r["dev_accuracy"] for r in results if (r["dataset"], r["method"], r["value"]) == key]
        print(f"| {key[0]} | {key[1]} | {key[2]:g} | {100 * np.mean(accs):.1f} ± {100 * np.std(accs, ddof=1):.1f} |")


if __name__ == "__main__":
    main()
