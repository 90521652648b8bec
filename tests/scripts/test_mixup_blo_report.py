"""scripts/mixup_blo_report.py: the MixupBLO tables from runs.jsonl."""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers import load_script


def _run(method, seed, acc):
    return {"run_key": f"{method}-{seed}", "status": "ok", "method": method, "dataset": "sst2", "n": 64, "seed": seed,
            "accuracy": acc, "train_seconds": 10.0, "inference_seconds_per_1k": 1.0}


@pytest.mark.parametrize("killed", [False, True])
def test_runs_are_read_once_each_a_cut_off_line_is_skipped_and_one_seed_has_no_nan(tmp_path, monkeypatch, capsys,
                                                                                    killed):
    runs = [_run("full", 0, 0.60), _run("full", 1, 0.70), _run("mixup_blo", 0, 0.65)]
    stale = {**runs[0], "accuracy": 0.10}  # written first, then rewritten by a retry: the latest counts
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (stale, *runs)) + (json.dumps(runs[1])[:40] if killed else ""))
    monkeypatch.setattr(sys, "argv", ["mixup_blo_report.py", str(path)])
    load_script("mixup_blo_report").main()
    printed = capsys.readouterr().out
    assert "| sst2 | 64 | 65.0 ± 7.1 (2) | 65.0 (1) |" in printed
    assert "nan" not in printed  # one seed has no spread: its cell says so ("-")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match="No such file: .*nope.jsonl"):
        load_script("mixup_blo_report").load([tmp_path / "nope.jsonl"])
