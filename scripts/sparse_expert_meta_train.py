"""Meta-train (or find in the cache) the SparseExpert adapter the ``sparse_expert`` bench methods use.

The benchmark pays meta-training in its first ``sparse_expert*`` run and reuses the cached adapter
afterwards; running this first measures meta-training on its own. It builds exactly the plan a bench
run builds (same sources, settings and held-out texts: every test split under ``--data-dir``), so
the bench finds the entry. Prints the summary (minutes, mask sparsity, bits per mask entry, sizes).

    python scripts/sparse_expert_meta_train.py --data-dir ../shared/data [--method sparse_expert_dense] \
        [--config meta_steps=100 meta_batch=4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_lowdata.cli import parse_options
from hf_lowdata.methods import RunContext, get_method
from hf_lowdata.methods.sparse_expert import BENCH_DATA_DIR_OPTION, META_FILE, meta_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the benchmark's --data-dir")
    parser.add_argument("--method", default="sparse_expert", help="sparse_expert or one of its meta-tuned ablations")
    parser.add_argument("--model", default=None)
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="the same as the bench's")
    args = parser.parse_args()
    options = {BENCH_DATA_DIR_OPTION: str(args.data_dir), **parse_options(args.config)}
    ctx = RunContext(model=args.model, options=options)
    method = get_method(args.method)
    folder = meta_train(method.plan(None, ctx), options.get("cache_dir"), quiet=False)
    summary = json.loads((folder / META_FILE).read_text())
    summary.pop("history")
    summary["minutes"] = round(summary["seconds"] / 60, 1)
    print(json.dumps({"adapter": str(folder), **summary}, indent=1))


if __name__ == "__main__":
    main()
