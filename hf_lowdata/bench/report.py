"""``summary.md`` and ``plots/*.png``, derived from the run records only.

Anything shown here can be recomputed from ``runs.jsonl`` with :func:`write_report`; nothing is
typed in by hand. The one exception is the list of planned runs without a record: it needs the run
keys of the invocation, which the benchmark passes (``planned``).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..paths import atomic_write_text

#: dataset, method, budget label, label noise, unlabelled pool, setting (model, precision, options)
GroupKey = tuple[str, str, str, float, int, str]


def _cell(value: Any) -> str:
    """``value`` as the text of one Markdown table cell: a ``|`` (a LoRA ``target_modules`` regex such as
    ``.*(query|value)``) would end the cell and shift the row, and a newline would end the row. Backslashes
    are doubled, since Markdown reads a backslash as an escape (a regex's ``\\.`` would render as ``.``)."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def budget_label(record: dict[str, Any]) -> str:
    return f"k={record['k']}" if record.get("k") is not None else f"N={record['n']}"


def setting_of(record: dict[str, Any], name_shared: bool = False) -> str:
    """What else a run was trained under: model, precision, method options, dev split (one string).

    ``name_shared``: other runs' models have the same name (folder name) but other files; the model is then
    also named by the start of its files' digest (``model_content``), so that its runs get rows of their own.
    """
    model = f"{record.get('model')}" + (f"@{(record.get('model_content') or 'unknown')[:8]}" if name_shared else "")
    parts = [f"model={model}", f"precision={record.get('precision', 'fp32')}"]
    parts += [f"{k}={v}" for k, v in sorted((record.get("options") or {}).items())]
    for key in ("dev_k", "budget_scale", "test_limit"):  # set only where they differ from the protocol's
        if record.get(key):
            parts.append(f"{key}={record[key]}")
    return " ".join(parts)


def latest_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per run: the last one written for its ``run_key`` (a run retried after a failure, or
    written twice, counts once, as its latest outcome); records without a key are all kept."""
    latest: dict[str, dict[str, Any]] = {}
    unkeyed: list[dict[str, Any]] = []
    for r in records:
        if "run_key" in r:
            latest.pop(r["run_key"], None)  # keep file order of the latest write
            latest[r["run_key"]] = r
        else:
            unkeyed.append(r)
    return [*latest.values(), *unkeyed]


def group_records(records: Iterable[dict[str, Any]]) -> dict[GroupKey, list[dict[str, Any]]]:
    """Latest successful runs grouped by (dataset, method, budget, label noise, unlabelled pool, setting):
    runs of another model (also one in a folder of the same name), precision or option setting never share
    a row."""
    groups: dict[GroupKey, list[dict[str, Any]]] = defaultdict(list)
    latest = latest_records(records)
    key_of = _row_key_function(latest)
    for r in latest:
        if r.get("status") == "ok":
            groups[key_of(r)].append(r)
    return dict(groups)


def _row_key_function(latest: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], GroupKey]:
    """The summary row a record belongs to (for a failed record: the row its run would have joined)."""
    contents: dict[str, set[str]] = defaultdict(set)  # model name -> digests of its files (older records have none)
    for r in latest:
        if r.get("status") == "ok" and r.get("model_content"):
            contents[str(r.get("model"))].add(r["model_content"])

    def key_of(r: dict[str, Any]) -> GroupKey:
        return (r["dataset"], r["method"], budget_label(r), float(r.get("label_noise") or 0.0),
                int(r.get("unlabelled") or 0), setting_of(r, len(contents[str(r.get("model"))]) > 1))

    return key_of


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std``; a single value is written alone, since one seed has no spread to report."""
    m, s = mean_std(values)
    if len(values) == 1:
        return f"{m * scale:.{digits}f}"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def recorded_values(rs: Sequence[dict[str, Any]], field: str) -> list[float]:
    """The finite numbers the runs recorded for ``field``: a record that lacks it (written by another tool or by hand)
    or holds NaN is left out, rather than stopping the report or turning the row's mean into ``nan``."""
    values = [r.get(field) for r in rs]
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _of_runs(n: int, total: int) -> str:
    """`` (n of total runs)`` where a cell averages fewer runs than its row has, else nothing."""
    return f" ({n} of {total} runs)" if n < total else ""


def _score_cell(values: Sequence[float], total: int) -> str:
    """:func:`format_mean_std` of ``values`` (scores of ``total`` runs), ``-`` when none recorded one."""
    return format_mean_std(values) + _of_runs(len(values), total) if values else "-"


def _stat_cell(rs: Sequence[dict[str, Any]], field: str, fn: Callable[[list[float]], float], spec: str) -> str:
    """``fn`` (median or mean) of the runs' ``field`` formatted with ``spec``, ``-`` when none recorded it."""
    values = recorded_values(rs, field)
    return format(fn(values), spec) + _of_runs(len(values), len(rs)) if values else "-"


def _budget_sort(label: str) -> tuple[str, int]:
    kind, value = label.split("=")
    return kind, int(value)


def _machine(record: dict[str, Any]) -> str:
    """Where a run trained: the machine's CPUs, and its GPU unless the run trained elsewhere (``--device cpu`` on a
    GPU machine; records without ``device``, written before it was recorded, are taken to have used the GPU)."""
    m = record.get("machine", {})
    on_gpu = m.get("cuda") and str(record.get("device", "cuda")).startswith("cuda")
    return f"{m.get('cpu_count')} CPUs, {m.get('torch_threads')} torch threads" + (f", GPU {m['cuda']}" if on_gpu else "")


#: The libraries whose versions the summary names (a ``--resume`` under other versions is reported).
LIBRARIES = ("torch", "transformers", "peft")


def _versions(record: dict[str, Any]) -> str:
    v = record.get("versions", {})
    return ", ".join(f"{lib} {v.get(lib)}" for lib in LIBRARIES)


def _tally(records: Sequence[dict[str, Any]], describe: Callable[[dict[str, Any]], str], preposition: str) -> str:
    """The one value ``describe`` gives the runs, or each value with how many runs had it: a ``--resume`` on
    another machine or under other library versions adds runs that differ from the first ones."""
    values = sorted({describe(r) for r in records})
    if len(values) == 1:
        return values[0]
    return "; ".join(f"{sum(describe(r) == v for r in records)} runs {preposition} {v}" for v in values)


def _mixed_versions(rs: Sequence[dict[str, Any]]) -> bool:
    """Whether a row averages runs made under different library versions (flagged ‡)."""
    return len({_versions(r) for r in rs}) > 1


def summary_markdown(records: Sequence[dict[str, Any]], planned: Sequence[str] = ()) -> str:
    """Mean ± std over seeds per dataset x method x budget x setting, plus OOD and failures.

    ``planned``: the run keys of the invocation; those without a record are listed, so a summary of a
    stopped (or still running) benchmark says which runs its means lack.
    """
    latest = latest_records(records)
    groups = group_records(latest)
    lines = ["# Benchmark summary", ""]
    ok = [r for r in latest if r.get("status") == "ok"]
    failed = [r for r in latest if r.get("status") == "failed"]
    retried = len(records) - len(latest)
    lines.append(f"{len(ok)} successful runs, {len(failed)} failed (the latest record of each run"
                 + (f"; {retried} earlier records of re-run runs not counted" if retried else "")
                 + "). Accuracy and macro-F1 in %, mean ± std over seeds (the sample standard deviation, n - 1 in the "
                 "denominator; the mean alone for one seed); train s is the median per run and "
                 "includes one-off costs a run paid (a meta-training, a feature cache); infer s/1k, peak memory, "
                 "parameters and bytes are means per run; MB are 2^20 bytes; peak RSS is the whole "
                 "process's, shared caches included.")
    if ok:
        lines.append(f"{_tally(ok, _versions, 'under')}; {_tally(ok, _machine, 'on')}.")
    settings = sorted({k[5] for k in groups})
    most_seeds = max((len({r["seed"] for r in rs}) for rs in groups.values()), default=0)
    recorded = {r["run_key"] for r in latest if "run_key" in r}
    missing = [json.loads(key) for key in dict.fromkeys(planned) if key not in recorded]
    # rows with runs that failed or are still to run are marked even where every row lacks as many (then no row is
    # fuller); a planned run's key names no setting, but an output folder holds one (a resume refuses another)
    key_of = _row_key_function(latest)
    with_failed = {key_of(r) for r in failed}
    with_missing = {(m["dataset"], m["method"], budget_label(m), float(m.get("label_noise") or 0.0),
                     int(m.get("unlabelled") or 0)) for m in missing}

    def incomplete(key: GroupKey, rs: Sequence[dict[str, Any]]) -> bool:
        return len({r["seed"] for r in rs}) < most_seeds or key in with_failed or key[:5] in with_missing
    lines.append("")
    gpu = any(r.get("peak_cuda_mb") for r in ok)
    header = ("| dataset | method | labels | noise | unlabelled | " + ("setting | " if len(settings) > 1 else "")
              + "seeds | accuracy | macro-F1 | median train s | infer s/1k | peak RSS MB | "
              + ("peak GPU MB | " if gpu else "") + "trainable params | saved bytes |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for key in sorted(groups, key=lambda k: (k[0], _budget_sort(k[2]), k[3], k[4], k[1], k[5])):
        dataset, method, label, noise, unl, setting = key
        rs = groups[key]
        seeds = len({r["seed"] for r in rs})
        n = len(rs)
        lines.append(
            f"| {_cell(dataset)} | {_cell(method)} | {label} | {noise:g} | {unl} | "
            + (f"{_cell(setting)} | " if len(settings) > 1 else "")
            + f"{seeds}{' †' if incomplete(key, rs) else ''}{' ‡' if _mixed_versions(rs) else ''} | "
            f"{_score_cell(recorded_values(rs, 'accuracy'), n)} | {_score_cell(recorded_values(rs, 'macro_f1'), n)} | "
            f"{_stat_cell(rs, 'train_seconds', np.median, '.1f')} | "
            f"{_stat_cell(rs, 'inference_seconds_per_1k', np.mean, '.2f')} | "
            f"{_stat_cell(rs, 'peak_rss_mb', np.mean, '.0f')} | "
            + (f"{_stat_cell(rs, 'peak_cuda_mb', np.mean, '.0f')} | " if gpu else "")
            + f"{_stat_cell(rs, 'trainable_params', lambda v: int(np.mean(v)), ',')} | "
            f"{_stat_cell(rs, 'adapter_bytes', lambda v: int(np.mean(v)), ',')} |"
        )
    if len(settings) == 1:
        lines.append(f"\nEvery row: {settings[0]}.")
    if any(incomplete(key, rs) for key, rs in groups.items()):
        lines.append(f"\n† fewer seeds than the {most_seeds} of the fullest rows, or runs of the row failed or are not "
                     "yet run (listed below): the row's seeds are its successful runs only.")
    if any(_mixed_versions(rs) for rs in groups.values()):
        lines.append(f"\n‡ runs made under different {', '.join(LIBRARIES)} versions (listed above): the row's means "
                     "mix them. Re-run the row under one set of versions (in another --out) to compare like with like.")
    ood_rows = [(k, rs) for k, rs in groups.items() if any(r.get("ood_accuracy") for r in rs)]
    if ood_rows:
        ood_header = ("| trained on | method | labels | noise | unlabelled | " + ("setting | " if len(settings) > 1 else "")
                      + "seeds | in-domain | out-of-domain (test set: accuracy) |")
        lines += ["", "## Out-of-domain accuracy (%)", "", ood_header, "|" + "---|" * (ood_header.count("|") - 1)]
        for key, rs in sorted(ood_rows, key=lambda kv: (kv[0][0], _budget_sort(kv[0][2]), kv[0][3], kv[0][4],
                                                        kv[0][1], kv[0][5])):
            dataset, method, label, noise, unl, setting = key
            targets = sorted({t for r in rs for t in r.get("ood_accuracy") or {}})
            cells = "; ".join(f"{_cell(t)}: {_score_cell(recorded_values([r['ood_accuracy'] for r in rs if isinstance(r.get('ood_accuracy'), dict)], t), len(rs))}"
                              for t in targets)
            lines.append(f"| {_cell(dataset)} | {_cell(method)} | {label} | {noise:g} | {unl} | "
                         + (f"{_cell(setting)} | " if len(settings) > 1 else "")
                         + f"{len({r['seed'] for r in rs})}{' ‡' if _mixed_versions(rs) else ''} | "
                         f"{_score_cell(recorded_values(rs, 'accuracy'), len(rs))} | {cells} |")
    if failed:  # each failed run by everything that tells it apart (label noise, pool, setting), not only its seed
        several = len(set(settings) | {setting_of(r) for r in failed}) > 1
        failed_header = ("| dataset | method | labels | noise | unlabelled | " + ("setting | " if several else "")
                         + "seed | error |")
        lines += ["", "## Failed runs", "", failed_header, "|" + "---|" * (failed_header.count("|") - 1)]
        for r in failed:
            error = _cell(str(r.get("error", ""))[:300])
            lines.append(f"| {_cell(r['dataset'])} | {_cell(r['method'])} | {budget_label(r)} | "
                         f"{float(r.get('label_noise') or 0.0):g} | {int(r.get('unlabelled') or 0)} | "
                         + (f"{_cell(setting_of(r))} | " if several else "") + f"{r['seed']} | {error} |")
    if missing:
        lines += ["", "## Planned runs without a record", "",
                  f"{len(missing)} of the {len(dict.fromkeys(planned))} runs planned by the last invocation have no "
                  "record yet (still to run, or the benchmark was stopped: `--resume` runs them). The means above "
                  "lack them.", "", "| dataset | method | labels | noise | unlabelled | seeds |", "|---|---|---|---|---|---|"]
        by_row: dict[tuple, list[int]] = defaultdict(list)
        for m in missing:
            by_row[(m["dataset"], m["method"], budget_label(m), float(m.get("label_noise") or 0.0),
                    int(m.get("unlabelled") or 0))].append(m["seed"])
        for (dataset, method, label, noise, unl), seeds in by_row.items():
            lines.append(f"| {_cell(dataset)} | {_cell(method)} | {label} | {noise:g} | {unl} | "
                         f"{', '.join(map(str, sorted(seeds)))} |")
    return "\n".join(lines) + "\n"


def write_plots(records: Sequence[dict[str, Any]], plot_dir: Path) -> list[Path]:
    """Accuracy vs label budget (error bars) per dataset, and accuracy vs training time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_records(records)
    if not groups:
        return []
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    methods = sorted({k[1] for k in groups})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    # tab10 has 10 colours: the 11th method would look like the first, so each further ten get another marker
    markers = {m: "os^DvP*Xph"[(i // 10) % 10] for i, m in enumerate(methods)}
    several_settings = len({k[5] for k in groups}) > 1  # then each line names its setting
    for dataset in sorted({k[0] for k in groups}):
        for kind in ("k", "N"):
            series = defaultdict(list)
            for (ds, method, label, noise, unl, setting), rs in groups.items():
                if ds != dataset or not label.startswith(kind + "=") or noise != 0.0:
                    continue
                scores = recorded_values(rs, "accuracy")
                if not scores:
                    continue
                m, s = mean_std(scores)
                series[(method, setting, unl)].append((int(label.split("=")[1]), m * 100, s * 100))
            if not series:
                continue
            fig, ax = plt.subplots(figsize=(6, 4))
            for (method, setting, unl), points in sorted(series.items()):
                points.sort()
                x, y, e = zip(*points)
                name = method + (f" [{setting}]" if several_settings else "") + (f" (+{unl} unlabelled)" if unl else "")
                ax.errorbar(x, y, yerr=e, marker=markers[method], capsize=3, label=name, color=colors[method],
                            linestyle="--" if unl else "-")
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({p[0] for pts in series.values() for p in pts}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("labelled examples per class (k)" if kind == "k" else "labelled examples in total (N)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{dataset}: accuracy vs labels (mean ± std over seeds)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            written.append(_save(fig, plot_dir / f"accuracy_vs_{kind.lower()}_{dataset}.png"))
            plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in methods:
        pts = [(np.median(recorded_values(rs, "train_seconds")), np.mean(recorded_values(rs, "accuracy")) * 100)
               for (ds, m, label, noise, unl, setting), rs in groups.items()
               if m == method and recorded_values(rs, "train_seconds") and recorded_values(rs, "accuracy")]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, y, label=method, color=colors[method], marker=markers[method], alpha=0.8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("median training time per run (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs training time (one point per dataset x budget)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, plot_dir / "accuracy_vs_train_time.png"))
    plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def write_report(records: Sequence[dict[str, Any]], out: str | Path, planned: Sequence[str] = ()) -> None:
    """Rewrite ``summary.md`` and ``plots/`` from the records (and the invocation's planned run keys)."""
    out = Path(out)
    atomic_write_text(out / "summary.md", summary_markdown(records, planned))
    write_plots(records, out / "plots")
