"""Meta-train (or find in the cache) the SparseExpert adapters the ``sparse_expert`` bench methods use.

The benchmark pays meta-training in its first ``sparse_expert*`` run on each dataset and reuses the
cached adapter afterwards; running this first measures meta-training on its own. For each of
``--datasets`` it builds exactly the plan a bench run on that dataset builds (same context as
``hf-lowdata bench``: sources minus the dataset itself, the same settings, and as held-out texts
every test split under ``--data-dir`` plus every text of the evaluated dataset), so the bench finds
the entry. Prints each summary (minutes, mask sparsity, bits per mask entry, sizes).

    python scripts/sparse_expert_meta_train.py --data-dir ../shared/data --datasets sst2,cr \
        [--method sparse_expert_dense] [--config meta_steps=100 meta_batch=4]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hf_lowdata.cli import _name_list, parse_options
from hf_lowdata.data import load_data, make_few_shot_task
from hf_lowdata.methods import RunContext, get_method
from hf_lowdata.methods.sparse_expert import (
    BENCH_DATA_DIR_OPTION,
    META_FILE,
    MetaTrainingPlan,
    SparseExpertMethod,
    meta_train,
)


def bench_context(data_dir: Path, model: str | None, options: Mapping[str, Any]) -> RunContext:
    """The context ``hf-lowdata bench --data-dir DATA_DIR --model MODEL --config ...`` gives a run
    (hf_lowdata.bench.runner.execute_run)."""
    return RunContext(model=model, options={BENCH_DATA_DIR_OPTION: str(data_dir), **options})


def bench_plans(method_name: str, data_dir: Path, datasets: Sequence[str], model: str | None = None,
                options: Mapping[str, Any] | None = None) -> dict[str, MetaTrainingPlan]:
    """The meta-training plan a bench run of ``method_name`` on each dataset builds. The plan depends on the
    dataset, not on the run's draw (the whole dataset is held out), so any draw of it gives the bench's key."""
    method = get_method(method_name)
    if not isinstance(method, SparseExpertMethod) or not method.meta_tune:
        raise SystemExit(f"{method_name} does not meta-train; give sparse_expert or one of its meta-tuned ablations.")
    ctx = bench_context(data_dir, model, options or {})
    plans = {}
    for name in datasets:
        if not (data_dir / name).is_dir():
            raise SystemExit(f"No dataset folder {data_dir / name}; --datasets names folders in --data-dir, as "
                             "hf-lowdata bench's --datasets does.")
        task = make_few_shot_task(load_data(data_dir / name, empty_text="drop"), seed=0, k=1, warn_on_overlap=False)
        plans[name] = method.plan(task, ctx)
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the benchmark's --data-dir")
    parser.add_argument("--datasets", type=_name_list, default=None,
                        help="the benchmark's --datasets (one adapter per dataset: each is held out of its own)")
    parser.add_argument("--method", default="sparse_expert", help="sparse_expert or one of its meta-tuned ablations")
    parser.add_argument("--model", default=None)
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="the same as the bench's")
    args = parser.parse_args()
    if not args.datasets:
        parser.error("give the benchmark's --datasets (e.g. --datasets sst2,cr): a bench run meta-trains without the "
                     "evaluated dataset and all of its texts, so each dataset has an adapter of its own")
    options = parse_options(args.config)
    method = get_method(args.method)
    plans = bench_plans(args.method, args.data_dir, args.datasets, args.model, options)
    cache_dir = method.option(bench_context(args.data_dir, args.model, options), "cache_dir")
    for dataset, plan in plans.items():
        folder = meta_train(plan, cache_dir, quiet=False)
        summary = json.loads((folder / META_FILE).read_text())
        summary.pop("history")
        summary["minutes"] = round(summary["seconds"] / 60, 1)
        print(json.dumps({"dataset": dataset, "adapter": str(folder), **summary}, indent=1))


if __name__ == "__main__":
    main()
