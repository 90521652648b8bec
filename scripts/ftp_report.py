"""The FTP section's tables from a benchmark's ``runs.jsonl``: accuracy in and out of domain, step times.

Reads what ``hf-lowdata bench`` recorded (nothing is re-run) and prints Markdown: in-domain
accuracy, out-of-domain accuracy per (train -> test) pair, and the median step / optimizer-step
seconds of each method with the ratios the FTP issue targets (FTP / full fine-tuning's AdamW,
FTP / TPGM). Usage:

    python scripts/ftp_report.py runs/ftp_ood/runs.jsonl
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from hf_lowdata.bench.report import format_mean_std, latest_records
from hf_lowdata.bench.results import read_records

METHOD_ORDER = ("full", "lora", "ftp", "ftp_lora", "tpgm")


def _cell(values: list[float]) -> str:
    return f"{format_mean_std(values)} (n={len(values)})" if values else "-"


def load(paths: list[Path]) -> list[dict]:
    """The successful k-shot runs of the files, each run once (its latest record, as the bench's summary);
    a cut-off last line (a kill mid-append) is skipped."""
    missing = [str(path) for path in paths if not Path(path).is_file()]
    if missing:
        raise SystemExit(f"No such file: {', '.join(missing)}. Give the runs.jsonl of a benchmark's --out folder.")
    records = latest_records(r for path in paths for r in read_records(path))
    return [r for r in records if r.get("status") == "ok" and r.get("k") is not None]


def _methods(records: list[dict]) -> list[str]:
    present = {r["method"] for r in records}
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def accuracy_tables(records: list[dict]) -> str:
    """In-domain and out-of-domain accuracy, mean ± std over seeds, one row per (dataset, k)."""
    methods = _methods(records)
    header = f"| trained on | test set | k | {' | '.join(methods)} |\n|---|---|---|{'---|' * len(methods)}\n"
    cells: dict[tuple[str, str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        cells[(r["dataset"], r["dataset"] + " (in-domain)", r["k"])][r["method"]].append(r["accuracy"])
        for other, acc in (r.get("ood_accuracy") or {}).items():
            cells[(r["dataset"], other, r["k"])][r["method"]].append(acc)
    rows = [f"| {d} | {t} | {k} | {' | '.join(_cell(by[m]) for m in methods)} |"
            for (d, t, k), by in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][2], "(" not in kv[0][1], kv[0][1]))]
    return header + "\n".join(rows)


def step_time_table(records: list[dict]) -> str:
    """Median over runs of each run's median step / optimizer-step seconds, and the target ratios."""
    steps, opts = defaultdict(list), defaultdict(list)
    for r in records:
        if r.get("step_seconds_median") is not None:
            steps[r["method"]].append(r["step_seconds_median"])
        if r.get("optimizer_step_seconds_median") is not None:
            opts[r["method"]].append(r["optimizer_step_seconds_median"])
    step, opt = {m: float(np.median(v)) for m, v in steps.items()}, {m: float(np.median(v)) for m, v in opts.items()}
    lines = ["| method | step s (median) | optimizer.step() s (median) | runs |", "|---|---|---|---|"]
    lines += [f"| {m} | {step.get(m, float('nan')):.3f} | {opt.get(m, float('nan')):.4f} | {len(steps.get(m, []))} |"
              for m in _methods(records)]

    def ratio(a: str, b: str, table: dict[str, float]) -> str:
        return f"{table[a] / table[b]:.2f}" if a in table and b in table and table[b] > 0 else "-"

    lines += [
        "",
        f"- FTP step / full fine-tuning (AdamW) step: **{ratio('ftp', 'full', step)}** (target <= 1.15)",
        f"- FTP step / TPGM step: **{ratio('ftp', 'tpgm', step)}** (target <= 0.75; the paper: ~0.65)",
        f"- FTP (LoRA delta) step / LoRA step: {ratio('ftp_lora', 'lora', step)}",
        f"- FTP optimizer.step() / AdamW on the same deltas (TPGM's base optimizer): {ratio('ftp', 'tpgm', opt)}",
        f"- FTP optimizer.step() / AdamW on every weight (full fine-tuning): {ratio('ftp', 'full', opt)}",
    ]
    return "\n".join(lines)


def paired_differences(records: list[dict], method: str = "ftp", reference: str = "full") -> str:
    """``method`` minus ``reference`` on the same draws (dataset, k, seed, test set), in and out of domain.

    Pairing removes the draw-to-draw variance that dominates few-shot accuracy, so a small mean
    difference can be read against its own standard error.
    """
    cells: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in records:
        draw = (r["dataset"], r["k"], r["seed"])
        cells[(*draw, "in")][r["method"]] = r["accuracy"]
        for other, acc in (r.get("ood_accuracy") or {}).items():
            cells[(*draw, other)][r["method"]] = acc
    lines = [f"| {method} - {reference} (points) | mean | standard error | pairs | {method} better / worse |",
             "|---|---|---|---|---|"]
    for label, in_domain in (("in-domain", True), ("out-of-domain", False)):
        diffs = np.array([100 * (v[method] - v[reference]) for k, v in cells.items()
                          if (k[3] == "in") == in_domain and method in v and reference in v])
        if len(diffs) < 2:
            continue
        se = np.std(diffs, ddof=1) / np.sqrt(len(diffs))
        lines.append(f"| {label} | {diffs.mean():+.2f} | {se:.2f} | {len(diffs)} | "
                     f"{int((diffs > 0).sum())} / {int((diffs < 0).sum())} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="runs.jsonl file(s) of hf-lowdata bench")
    args = parser.parse_args()
    records = load(args.runs)
    if not records:
        raise SystemExit("No successful k-shot runs in the given files.")
    print("### Accuracy (%), mean ± std over seeds\n")
    print(accuracy_tables(records))
    print("\n### Paired differences\n")
    print(paired_differences(records))
    print("\n### Step time (s)\n")
    print(step_time_table(records))


if __name__ == "__main__":
    main()
