"""MixupBLO's benchmark tables and targets from ``hf-lowdata bench`` records (runs.jsonl).

Prints Markdown: accuracy mean ± std over seeds per (dataset, N, method); per N the average over
datasets of each method's gain over full fine-tuning and of its seed-to-seed std; training wall time
and inference seconds per 1,000 texts relative to full fine-tuning. Usage:

    python scripts/mixup_blo_report.py runs/mixup_blo/runs.jsonl [more runs.jsonl ...]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from hf_lowdata.bench.report import format_mean_std, latest_records
from hf_lowdata.bench.results import read_records

BASELINE = "full"


def load(paths: list[Path]) -> list[dict]:
    """The successful runs with a total N of the files, each run once (its latest record, as the bench's
    summary); a cut-off last line (a kill mid-append) is skipped."""
    missing = [str(path) for path in paths if not Path(path).is_file()]
    if missing:
        raise SystemExit(f"No such file: {', '.join(missing)}. Give the runs.jsonl of a benchmark's --out folder.")
    records = latest_records(r for path in paths for r in read_records(path))
    return [r for r in records if r.get("status") == "ok" and r.get("n")]


def _fmt(values: list[float]) -> str:
    return f"{format_mean_std(values)} ({len(values)})"


def report(records: list[dict]) -> str:
    acc: dict[tuple, list[float]] = defaultdict(list)
    seconds: dict[tuple, list[float]] = defaultdict(list)
    infer: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        key = (r["dataset"], r["n"], r["method"])
        acc[key].append(r["accuracy"])
        seconds[key].append(r["train_seconds"])
        infer[key].append(r["inference_seconds_per_1k"])
    methods = sorted({k[2] for k in acc}, key=lambda m: (m != BASELINE, m != "lora", m))
    cells = sorted({k[:2] for k in acc})
    lines = ["### Accuracy (%), mean ± std over seeds (runs)", "",
             "| dataset | N | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for dataset, n in cells:
        row = [_fmt(acc[dataset, n, m]) if acc.get((dataset, n, m)) else "-" for m in methods]
        lines.append(f"| {dataset} | {n} | " + " | ".join(row) + " |")
    lines += ["", f"### Per N, averaged over the datasets that have both the method and `{BASELINE}`", "",
              "| N | method | datasets | gain over full (points) | seed std (points) | full's seed std | "
              "train time / full | inference s/1k / full |", "|---|---|---|---|---|---|---|---|"]
    for n in sorted({c[1] for c in cells}):
        for m in methods:
            if m == BASELINE:
                continue
            shared = [d for d, nn in cells if nn == n and acc.get((d, n, m)) and acc.get((d, n, BASELINE))]
            if not shared:
                continue
            gain = np.mean([np.mean(acc[d, n, m]) - np.mean(acc[d, n, BASELINE]) for d in shared])
            spread = [np.std(acc[d, n, m], ddof=1) for d in shared if len(acc[d, n, m]) > 1]
            base_spread = [np.std(acc[d, n, BASELINE], ddof=1) for d in shared if len(acc[d, n, BASELINE]) > 1]
            time_ratio = np.mean([np.mean(seconds[d, n, m]) / np.mean(seconds[d, n, BASELINE]) for d in shared])
            infer_ratio = np.mean([np.mean(infer[d, n, m]) / np.mean(infer[d, n, BASELINE]) for d in shared])
            lines.append(
                f"| {n} | {m} | {len(shared)} | {100 * gain:+.2f} | "
                f"{f'{100 * np.mean(spread):.2f}' if spread else '-'} | "
                f"{f'{100 * np.mean(base_spread):.2f}' if base_spread else '-'} | {time_ratio:.1f}x | "
                f"{infer_ratio:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="runs.jsonl files written by hf-lowdata bench")
    args = parser.parse_args()
    records = load(args.runs)
    if not records:
        raise SystemExit("No finished runs with a total N (--totals) in the given files.")
    print(report(records))


if __name__ == "__main__":
    main()
