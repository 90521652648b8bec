"""Time the demo's quick preset: LoRA, the probe and one hf_lowdata method on a 16-per-class upload.

It calls the function behind the page's Compare button (``app.run_comparison``) on files written
from the shared SST-2 data: 16 labelled examples per class drawn with hf_lowdata's sampler (the
upload), the first 200 dev examples (the evaluation file) and 500 other training texts (the
unlabelled file). It prints each method's training time and scores, the wall time of the whole
comparison (click to "Finished", evaluation and saving included), the CPU seconds the process used
(on a busy shared machine, CPU seconds / cores is the better estimate of the unshared wall time),
and the load average::

    .venv/bin/python spaces_demo/benchmark_quick.py [--data-dir ../shared/data] [--method twin_turbo]

The data folder defaults to ``$HF_LOWDATA_DATA_DIR`` (where hf_lowdata looks for the shared datasets),
else ``shared/data`` beside the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from hf_lowdata.data import DatasetSplits, load_data, make_few_shot_task
from hf_lowdata.paths import DATA_DIR_ENV, atomic_write_text


def _write_csv(path: Path, rows: list[dict]) -> str:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def default_data_dir() -> Path:
    """``$HF_LOWDATA_DATA_DIR`` when set, else ``shared/data`` beside the repository."""
    return Path(os.environ.get(DATA_DIR_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help=f"folder holding sst2/ (default: ${DATA_DIR_ENV}, else shared/data beside the repository)")
    parser.add_argument("--method", default="twin_turbo", help="the hf_lowdata method to time beside lora and probe")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    return parser


def main() -> None:
    from app import SessionStore, run_comparison  # spaces_demo/app.py, beside this file (imports gradio)

    args = build_parser().parse_args()
    if not (args.data_dir / "sst2").is_dir():
        raise SystemExit(f"No sst2 folder in {args.data_dir}: give --data-dir, or set {DATA_DIR_ENV} to the folder "
                         "holding the shared datasets.")
    splits = load_data(args.data_dir / "sst2")
    task = make_few_shot_task(DatasetSplits("sst2", splits.label_names, splits.train), seed=0, k=16)
    names = splits.label_names
    used = set(task.labelled.texts)
    unlabelled = [{"text": t} for t in splits.train.texts if t not in used][:500]
    assert splits.dev is not None and splits.dev.labels is not None
    with tempfile.TemporaryDirectory(prefix="hf_lowdata_demo_bench_") as tmp:
        root = Path(tmp)
        labelled = _write_csv(root / "sst2_16_per_class.csv",
                              [{"text": t, "label": names[y]} for t, y in zip(task.labelled.texts, task.labelled.labels)])
        evaluation = _write_csv(root / "sst2_dev_200.csv", [{"text": t, "label": names[y]} for t, y in
                                                             zip(splits.dev.texts[:200], splits.dev.labels[:200])])
        unl = _write_csv(root / "sst2_unlabelled_500.csv", unlabelled)
        store = SessionStore(root / "sessions")
        session = store.get("benchmark")
        load_before = os.getloadavg()
        start, cpu_start = time.perf_counter(), time.process_time()
        streamed = list(run_comparison(session, labelled, "text", "label", unl, evaluation, None,
                                       ["lora", "probe", args.method], args.preset, "", 0))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        load_after = os.getloadavg()
        results = session.finished()
        figures = {
            "wall_seconds": round(wall, 1), "process_cpu_seconds": round(cpu, 1),
            "torch_threads": torch.get_num_threads(), "status": streamed[-1][0], "preset": args.preset,
            "labelled": len(task.labelled), "evaluation_examples": 200, "unlabelled": len(unlabelled),
            "methods": {m: {"train_seconds": round(r.train_seconds, 1), "accuracy": round(r.evaluation.accuracy, 4),
                            "macro_f1": round(r.evaluation.macro_f1, 4), "trainable_parameters": r.trainable_parameters,
                            "adapter_kib": round(r.adapter_bytes / 1024, 1)} for m, r in results.items()},
            "failed": {m: r.error for m, r in session.runs.items() if r.status != "done"},
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in load_after],
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
        }
        store.close()
    print(json.dumps(figures, indent=2))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
