"""MixupBLO's benchmark tables and targets from ``hf-lowdata bench`` records (runs.jsonl).

Prints Markdown: accuracy mean ± std over seeds per (dataset, N, method); per N the average over
datasets of each method's gain over full fine-tuning and of its seed-to-seed std; training wall time
and inference seconds per 1,000 texts relative to full fine-tuning. Usage:

    python scripts/mixup_blo_report.py runs/mixup_blo/runs.jsonl [more runs.jsonl ...]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

BASELINE = "full"


def load(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if record.get("status") == "ok" and record.get("n"):
                    records.append(record)
    return records


def _fmt(values: list[float]) -> str:
    std = np.std(values, ddof=1) if len(values) > 1 else float("nan")
    return f"{100 * np.mean(values):.1f} ± {100 * std:.1f} ({len(values)})"


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
                f"{100 * np.mean(spread) if spread else float('nan'):.2f} | "
                f"{100 * np.mean(base_spread) if base_spread else float('nan'):.2f} | {time_ratio:.1f}x | "
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
