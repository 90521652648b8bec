"""Sweep a method's settings (learning rate, FTP's mu / kappa, TwinTurbo's loss weights, ...) on official *dev* splits, never on test.

``scripts/tune_budgets.py`` varies learning rates only; method settings are ``--config`` options,
so this script takes a grid of ``key=v1,v2`` pairs (``lr`` is the learning rate, any other key a
``--config`` option of the method) and scores every combination on ``dev.jsonl`` with the k-shot
sets the benchmark draws (plus an unlabelled pool of ``--unlabelled`` texts for semi-supervised
methods). Examples (about 30 s per run on a quiet 2-core CPU):

    python scripts/dev_sweep.py --data-dir ../shared/data --datasets sst2,sst5 --k 16 --seeds 0,1,2 \\
        --method ftp --grid lr=5e-5,1e-4,2e-4 mu=1e-2,1e-1 --out runs/ftp_dev_sweep.json
    python scripts/dev_sweep.py --data-dir ../shared/data --datasets sst2,sst5 --k 8 --seeds 0,1,2 \\
        --method twin_turbo --unlabelled 2000 --grid latent_weight=0,0.03,0.1 --out runs/tt_dev_sweep.json
"""

from __future__ import annotations

import argparse
import itertools
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
from hf_lowdata.workflow import budget_key


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--datasets", default="sst2,sst5")
    parser.add_argument("--method", default="ftp")
    parser.add_argument("--model", default=None, help="model name or folder (default: the packaged MiniLM)")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--unlabelled", type=int, default=0, help="unlabelled pool size (semi-supervised methods)")
    parser.add_argument("--grid", nargs="+", required=True, help="key=v1,v2 ... (lr = learning rate)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    _quiet_libraries()
    cache, rows = SharedCache(), []
    base = get_budget(budget_key(args.method))  # a variant sweeps with its method's budget
    for dataset in args.datasets.split(","):
        splits = load_data(args.data_dir / dataset, empty_text="drop")
        if splits.dev is None:
            raise SystemExit(f"{dataset} has no official dev split; sweep on datasets that have one (sst2, sst5).")
        for setting in parse_grid(args.grid):
            options = {k: v for k, v in setting.items() if k != "lr"}
            budget = replace(base, learning_rate=float(setting.get("lr", base.learning_rate)),
                             options={**base.options, **options})
            for seed in map(int, args.seeds.split(",")):
                task = make_few_shot_task(splits, seed=seed, k=args.k, unlabelled=args.unlabelled, warn_on_overlap=False)
                set_seed(seed)
                with tempfile.TemporaryDirectory() as work:
                    ctx = RunContext(model=args.model, seed=seed, budget=budget, work_dir=Path(work), cache=cache, quiet=True)
                    fitted = get_method(args.method).fit(task, ctx)
                    accuracy = float((fitted.predict(splits.dev.texts) == np.array(splits.dev.labels)).mean())
                rows.append({"dataset": dataset, "method": args.method, **setting, "seed": seed,
                             "unlabelled": args.unlabelled, "dev_accuracy": accuracy,
                             "step_seconds": fitted.train_step_seconds})
                print(json.dumps(rows[-1]), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=1))
    keys = list(parse_grid(args.grid)[0])
    print(f"\n| dataset | {' | '.join(keys)} | dev accuracy (mean ± std) |\n|---|{'---|' * len(keys)}---|")
    for dataset in args.datasets.split(","):
        for setting in parse_grid(args.grid):
            accs = [r["dev_accuracy"] for r in rows if r["dataset"] == dataset and all(r[k] == v for k, v in setting.items())]
            spread = 100 * np.std(accs, ddof=1) if len(accs) > 1 else 0.0
            print(f"| {dataset} | {' | '.join(str(setting[k]) for k in keys)} | {100 * np.mean(accs):.1f} ± {spread:.1f} |")


if __name__ == "__main__":
    main()
