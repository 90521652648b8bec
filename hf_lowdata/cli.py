"""The ``hf-lowdata`` command line."""

from __future__ import annotations

import argparse
import ast
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _int_list(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) or a mix: ``"0-2,8"``."""
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            values.extend(range(int(lo), int(hi) + 1))
        else:
            values.append(int(part))
    return values


def _float_list(text: str) -> list[float]:
    return [float(p) for p in text.split(",") if p.strip()]


def _name_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are Python literals where they parse (numbers, lists), else strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise argparse.ArgumentTypeError(f"--config expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        options[key.strip()] = value
    return options


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="compare methods under one few-shot protocol",
        description="Run every (dataset, label budget, seed, method) and write OUT/runs.jsonl, OUT/summary.md "
        "and OUT/plots/*.png.",
    )
    p.add_argument("--data-dir", required=True, type=Path, help="folder with one sub-folder per dataset")
    p.add_argument("--datasets", required=True, type=_name_list, help="comma-separated dataset folder names")
    p.add_argument("--methods", required=True, type=_name_list, help="comma-separated method names (see --list-methods)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--shots", type=_int_list, default=None, help="labelled examples per class, e.g. 8,16 (default 8,16)")
    p.add_argument("--totals", type=_int_list, default=[], help="labelled examples in total, e.g. 300,500,1000")
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2, 3, 4], help="seeds, e.g. 0,1,2 or 0-4 (default 0-4)")
    p.add_argument("--model", default=None, help="model name or local folder (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--ood-datasets", type=_name_list, default=[], help="also test on these datasets (same labels)")
    p.add_argument("--label-noise", type=_float_list, default=[0.0], help="fractions of wrong labels, e.g. 0.1,0.3")
    p.add_argument("--unlabelled", type=int, default=0, help="unlabelled pool size for semi-supervised methods")
    p.add_argument("--dev-k", type=int, default=None, help="a disjoint dev set of this many examples per class")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="method options, e.g. r=16")
    p.add_argument("--resume", action="store_true", help="continue the benchmark in --out, skipping finished runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, run_benchmark

    shots = args.shots if args.shots is not None else ([] if args.totals else [8, 16])
    config = BenchConfig(
        data_dir=args.data_dir,
        datasets=args.datasets,
        methods=args.methods,
        out=args.out,
        shots=shots,
        totals=args.totals,
        seeds=args.seeds,
        model=args.model,
        ood_datasets=args.ood_datasets,
        label_noise=args.label_noise,
        unlabelled=args.unlabelled,
        dev_k=args.dev_k,
        resume=args.resume,
        device=args.device,
        options=parse_options(args.config),
    )
    records = run_benchmark(config, show_progress=not args.no_progress)
    failed = [r for r in records if r.get("status") == "failed"]
    print(f"{len(records) - len(failed)} runs ok, {len(failed)} failed; results in {args.out}/summary.md")
    for r in failed[:5]:
        print(f"  failed: {r['dataset']} {r['method']} seed={r['seed']}: {r.get('error')}", file=sys.stderr)
    return 1 if failed else 0


def _list_methods(args: argparse.Namespace) -> int:
    from .methods import METHODS

    for name in sorted(METHODS):
        cls = METHODS[name]
        reason = cls.unavailable_reason()
        print(f"{name:16s} {cls.summary}" + (f"  [unavailable: {reason}]" if reason else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-lowdata", description="Few-label fine-tuning with PEFT methods.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_bench(sub)
    lm = sub.add_parser("methods", help="list the available methods")
    lm.set_defaults(func=_list_methods)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    import hf_lowdata  # noqa: F401  (registers the PEFT methods before anything loads an adapter)

    from .bench import BenchError
    from .data import DataError
    from .models import ModelNotFoundError

    try:
        return int(args.func(args) or 0)
    except (BenchError, DataError, ModelNotFoundError) as err:
        print(f"hf-lowdata {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
