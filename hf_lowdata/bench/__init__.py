"""The benchmark: every method under one protocol, results as JSONL, summary and plots."""

from .report import summary_markdown, write_plots, write_report
from .results import append_record, read_records
from .runner import BenchConfig, BenchError, RunSpec, plan_runs, run_benchmark

__all__ = [
    "BenchConfig",
    "BenchError",
    "RunSpec",
    "append_record",
    "plan_runs",
    "read_records",
    "run_benchmark",
    "summary_markdown",
    "write_plots",
    "write_report",
]
