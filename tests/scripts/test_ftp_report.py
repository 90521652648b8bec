"""scripts/ftp_report.py: the paired FTP - full differences it prints into BENCHMARKS.md."""

from __future__ import annotations

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
