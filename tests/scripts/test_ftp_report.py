"""scripts/ftp_report.py: the paired FTP - full differences it prints into BENCHMARKS.md."""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers import load_script


def _report():
    return load_script("ftp_report")


def _run(method, seed, acc, ood):
    return {"method": method, "dataset": "sst2", "k": 16, "seed": seed, "accuracy": acc, "ood_accuracy": {"cr": ood}}


def test_paired_differences_pair_the_same_draws():
    records = [
        _run("full", 0, 0.60, 0.50), _run("ftp", 0, 0.62, 0.49),
        _run("full", 1, 0.70, 0.55), _run("ftp", 1, 0.70, 0.58),
        _run("full", 2, 0.65, 0.52),  # no FTP run on this draw: not a pair
    ]
    table = _report().paired_differences(records).splitlines()
    in_domain = [c.strip() for c in table[2].split("|")[1:-1]]
    out_of_domain = [c.strip() for c in table[3].split("|")[1:-1]]
    assert in_domain[0] == "in-domain" and in_domain[1] == "+1.00" and in_domain[3] == "2" and in_domain[4] == "1 / 0"
    assert out_of_domain[1] == "+1.00" and out_of_domain[2] == "2.00" and out_of_domain[4] == "1 / 1"


def _write_runs(path, records, cut_off=None):
    """``records`` as runs.jsonl lines, then the first 40 characters of ``cut_off`` (a kill mid-append)."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text + (json.dumps(cut_off)[:40] if cut_off else ""))
    return path


@pytest.mark.parametrize("killed", [False, True])
def test_runs_are_read_once_each_and_a_cut_off_line_is_skipped(tmp_path, monkeypatch, capsys, killed):
    """A record written twice counted twice, and a cut-off last line (which the bench's own reader skips)
    crashed the report with a JSONDecodeError."""
    runs = [{**_run(m, s, acc, 0.5), "run_key": f"{m}-{s}", "status": "ok"}
            for m, acc in (("full", 0.60), ("ftp", 0.70)) for s in (0, 1)]
    stale = {**runs[0], "accuracy": 0.10}  # full seed 0, first written with another outcome, then rewritten
    path = _write_runs(tmp_path / "runs.jsonl", [stale, *runs], cut_off=runs[2] if killed else None)
    monkeypatch.setattr(sys, "argv", ["ftp_report.py", str(path)])
    _report().main()
    printed = capsys.readouterr().out
    assert "| sst2 | sst2 (in-domain) | 16 | 60.0 ± 0.0 (n=2) | 70.0 ± 0.0 (n=2) |" in printed
