"""``hf-lowdata bench``: every method under one protocol (see ``shared/specs/benchmark.md``).

The plan is the cross product datasets x label budgets (k per class and/or N in total) x label-noise
levels x seeds x methods. Runs of one dataset are grouped so the data is read and the frozen
test-set embeddings are computed once per dataset. Each finished run is appended to
``OUT/runs.jsonl`` at once (see :mod:`hf_lowdata.bench.results`); ``--resume`` skips finished runs;
``summary.md`` and ``plots/`` are derived from the JSONL after every run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .. import budgets as budget_table
from ..budgets import Budget
from ..data import (
    DEV_K_SAME,
    TEXT_FILE_SUFFIXES,
    DataError,
    DatasetSplits,
    DataWarning,
    check_label_space,
    load_data,
    make_few_shot_task,
)
from ..methods import METHODS, MethodConfigError, RunContext, SharedCache, get_method
from ..methods.base import (
    default_device,
    directory_bytes,
    fixed_option_conflicts,
    unknown_options,
    unlabelled_pool_size,
)
from ..methods.sparse_expert import BENCH_DATA_DIR_OPTION
from ..models import (
    ModelNotFoundError,
    model_content_digest,
    model_id,
    require_text_model,
    resolve_model_path,
)
from ..paths import atomic_write_text
from .measure import PeakMemory, Timer, accuracy, environment, macro_f1
from .report import write_report
from .results import append_record, finished_keys, jsonable, locked_output, read_records, repair_tail

RUNS_FILE = "runs.jsonl"
#: Texts timed without the feature cache for methods that memoise features (the probe).
INFERENCE_TIMING_SAMPLE = 256


class BenchError(ValueError):
    """A benchmark invocation that cannot run as given; the message says how to fix it."""


@dataclass
class BenchConfig:
    """One benchmark invocation (the CLI's flags).

    Args:
        data_dir: folder holding one sub-folder per dataset (the shared format).
        datasets: names of the sub-folders to train on.
        methods: registered method names.
        out: output folder (``runs.jsonl``, ``summary.md``, ``plots/``).
        shots: labelled examples per class (k); one run set per value (protocol default 8, 16, 32).
        totals: labelled examples in total (N), stratified; one run set per value.
        seeds: seeds of the runs (labelled-set draw, initialisation, data order).
        model: model name or folder (``None``: the packaged default).
        ood_datasets: datasets to also test on (same label set; the training dataset is skipped).
        label_noise: fractions of labelled examples that get a wrong label (0.0 = clean).
        unlabelled: size of the unlabelled pool (protocol default 2,000), drawn only for methods that use
            unlabelled data; other methods' runs are planned and recorded with 0.
        dev_k: a disjoint dev set of this many examples per class (off by default); ``"same"``: as many as the
            labelled set (k per class; a total N gives N / classes per class, rounded up).
        resume: continue an earlier invocation in ``out``, skipping its finished runs.
        device: torch device (default: CUDA if available, else CPU).
        bf16: train under bf16 autocast (see :class:`~hf_lowdata.methods.RunContext`).
        options: method options (``--config key=value``) applied to every method that reads them.
        report_every: rewrite summary and plots after this many runs (and at the end).
    """

    data_dir: Path
    datasets: list[str]
    methods: list[str]
    out: Path
    shots: list[int] = field(default_factory=lambda: [8, 16, 32])
    totals: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    model: str | None = None
    ood_datasets: list[str] = field(default_factory=list)
    label_noise: list[float] = field(default_factory=lambda: [0.0])
    unlabelled: int = 2000
    dev_k: int | str | None = None
    resume: bool = False
    device: str | None = None
    bf16: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    report_every: int = 1


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    method: str
    seed: int
    k: int | None = None
    n: int | None = None
    label_noise: float = 0.0
    unlabelled: int = 0

    def key(self, model: str) -> str:
        return json.dumps({**asdict(self), "model": model}, sort_keys=True)


def plan_runs(config: BenchConfig) -> list[RunSpec]:
    """All runs of an invocation, grouped by dataset (then budget, noise, seed, method), each once: a value
    given twice (``--methods probe,probe``, ``--seeds 0,0-4``) plans its runs once, in the order first named."""
    budgets = [("k", k) for k in config.shots] + [("n", n) for n in config.totals]
    specs: dict[RunSpec, None] = {}
    for dataset in config.datasets:
        for kind, value in budgets:
            for noise in config.label_noise:
                for seed in config.seeds:
                    for method in config.methods:
                        pool = unlabelled_pool_size(method, config.unlabelled)
                        specs[RunSpec(dataset, method, seed, label_noise=noise, unlabelled=pool, **{kind: value})] = None
    return list(specs)


def validate(config: BenchConfig) -> None:
    """Fail before any training: unknown methods or datasets, empty plans, incompatible OOD sets."""
    if not config.methods:
        raise BenchError("No methods given; pass --methods, e.g. --methods probe,lora.")
    for name in config.methods:
        try:
            get_method(name)
        except (KeyError, RuntimeError) as err:
            raise BenchError(str(err.args[0] if err.args else err)) from err
    budget_fields = sorted({f.name for f in fields(Budget)} & set(config.options))
    if budget_fields:
        raise BenchError(f"--config {', '.join(budget_fields)}: the benchmark trains every method with its fixed budget "
                         "(hf_lowdata/budgets.py) so that runs compare; change it there, or train one method with "
                         "hf-lowdata train --config.")
    message = unknown_options(config.methods, list(config.options)) or fixed_option_conflicts(config.methods,
                                                                                            config.options)
    if message:
        raise BenchError(f"--config: {message}")
    if not config.datasets:
        raise BenchError("No datasets given; pass --datasets, e.g. --datasets sst2,cr.")
    if not config.shots and not config.totals:
        raise BenchError("No label budget given: pass --shots (per class) and/or --totals (in total).")
    if not config.seeds:
        raise BenchError("No seeds given; pass --seeds, e.g. --seeds 0,1,2,3,4.")
    bad_budgets = [f"--shots {k}" for k in config.shots if k < 1] + [f"--totals {n}" for n in config.totals if n < 2]
    bad_budgets += [f"--label-noise {p}" for p in config.label_noise if not 0.0 <= p < 1.0]
    bad_budgets += [f"--unlabelled {config.unlabelled}"] if config.unlabelled < 0 else []
    bad_budgets += [f"--seeds {s}" for s in config.seeds if not 0 <= s < 2**32]  # what numpy and torch accept
    bad_budgets += [f"--dev-k {config.dev_k}"] if config.dev_k is not None and config.dev_k != DEV_K_SAME and (
        isinstance(config.dev_k, str) or config.dev_k < 1) else []
    if bad_budgets:
        raise BenchError(f"{', '.join(bad_budgets)}: shots must be at least 1, totals at least 2, label-noise "
                         "fractions from 0 up to (not including) 1, the unlabelled pool 0 or more, seeds from 0 to "
                         f"{2**32 - 1}, and dev-k at least 1 or '{DEV_K_SAME}' (leave it out for no dev set).")
    data_dir = Path(config.data_dir)
    if not data_dir.is_dir():
        raise BenchError(f"--data-dir {data_dir} is not a folder.")
    available = sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    for name in [*config.datasets, *config.ood_datasets]:
        if name not in available:
            raise BenchError(f"Dataset {name!r} not found in {data_dir}. Available: {', '.join(available) or 'none'}.")
    try:
        default_device(config.device)
    except RuntimeError as err:  # every run records its device: a name torch does not know fails here, not in a run
        raise BenchError(f"--device {config.device}: {err}") from err
    require_text_model(config.model)  # a missing, image or tokenizer-less model fails here, with its message
    for name in config.methods:  # option values (and SMAT's source datasets) fail here, not in every run of a method
        try:
            get_method(name).check_options(RunContext(model=config.model, options=run_options(config)))
        except (MethodConfigError, DataError) as err:
            raise BenchError(str(err)) from err


def run_options(config: BenchConfig) -> dict[str, Any]:
    """The method options of every run: ``--config`` and the data folder (where SMAT looks for its sources)."""
    return {BENCH_DATA_DIR_OPTION: str(config.data_dir), **config.options}


#: Settings that change results but are not part of a run's key: a resumed benchmark must keep them.
# --ood-datasets belongs here too: their test texts are kept out of the labelled sets and pools, so they
# change what every run draws. The model is in the run key by name only; its files are compared as well
# (model_identity), so another model in a folder of the same name is refused too.
RESUME_SETTINGS = ("options", "dev_k", "bf16", "ood_datasets")


def model_identity(model: str | None) -> dict[str, str]:
    """The benchmark's model as ``config.json`` records it: its name (the one in run keys and the report), its
    resolved folder, and a digest of its files. Run keys hold only the folder name, so two models in folders
    of the same name are told apart by ``content`` (the same files at another path are the same model)."""
    path = resolve_model_path(model)
    return {"name": model_id(model), "path": str(path), "content": model_content_digest(path)}


def dataset_digest(folder: str | os.PathLike) -> str:
    """A digest of what the benchmark reads from a dataset folder: its ``train``, ``dev`` and ``test`` files and
    ``meta.json`` (label names), by name and bytes. Run keys name a dataset by its folder name only, so a resume
    on other data under that name (another ``--data-dir``, an edited file) is told apart by this digest."""
    import hashlib

    path = Path(folder)
    names = [f"{split}{suffix}" for split in ("train", "dev", "test") for suffix in TEXT_FILE_SUFFIXES] + ["meta.json"]
    h = hashlib.blake2b(digest_size=16)
    for file in (path / name for name in names):
        if file.is_file():
            h.update(file.name.encode() + b"\x1e")
            with file.open("rb") as stream:
                while chunk := stream.read(1 << 22):
                    h.update(chunk)
            h.update(b"\x1e")
    return h.hexdigest()


def dataset_digests(config: BenchConfig) -> dict[str, str]:
    """:func:`dataset_digest` of every dataset the invocation trains or tests on (``--datasets``, ``--ood-datasets``)
    and of those its methods read from the same folder (SparseExpert's meta-training sources)."""
    read = [name for m in config.methods if m in METHODS for name in METHODS[m].data_dir_datasets(config.options)]
    names = [*config.datasets, *config.ood_datasets, *(n for n in read if (Path(config.data_dir) / n).is_dir())]
    return {name: dataset_digest(Path(config.data_dir) / name) for name in dict.fromkeys(names)}


def method_budgets(methods: list[str]) -> dict[str, Any]:
    """The budgets (``hf_lowdata/budgets.py``) the methods train with, by budget name, as ``config.json`` records
    them. Run keys do not hold them, so a resume after a budget was edited (the way validate's message gives to
    change one) is told apart by them."""
    entries = dict.fromkeys(METHODS[m].budget_key() if m in METHODS else m for m in methods)
    table = budget_table.BUDGETS
    return json.loads(json.dumps({name: asdict(table[name]) for name in entries if name in table}, default=str))


def _read_settings(saved_file: Path) -> dict[str, Any]:
    """The settings file of an earlier invocation (``{}`` if there is none or it cannot be read)."""
    try:
        saved = json.loads(saved_file.read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _recorded_model(saved: dict[str, Any]) -> dict[str, str] | None:
    """The model a settings file was written for; for a file written before the model was recorded, the one its
    ``--model`` resolves to now (``None`` if it no longer resolves: nothing to compare with)."""
    if isinstance(saved.get("model"), dict):
        return saved["model"]
    config = saved.get("config", {})
    if "model" not in config:
        return None
    try:
        return model_identity(config["model"])
    except (ModelNotFoundError, OSError):
        return None


def _check_resumed_settings(config: BenchConfig, saved_file: Path, model: dict[str, str],
                            data: dict[str, str] | None = None, budgets: dict[str, Any] | None = None) -> None:
    """Refuse to resume with another model (``model``: :func:`model_identity`), other data under a dataset's name
    (``data``: :func:`dataset_digests`), other method budgets (``budgets``: :func:`method_budgets`) or other
    ``--config`` / ``--dev-k`` / ``--bf16`` / ``--ood-datasets`` than the runs recorded (one summary row would
    otherwise average runs trained under different settings, and runs of another model or other data under the
    same name would count as done)."""
    if not config.resume or not saved_file.is_file():
        return
    saved_file_data = _read_settings(saved_file)
    if not saved_file_data:
        return  # an unreadable settings file says nothing; the run keys still guard the rest
    saved = saved_file_data.get("config", {})
    now = json.loads(json.dumps({k: getattr(config, k) for k in RESUME_SETTINGS}, default=str))
    changed = {k: (saved.get(k), now[k]) for k in RESUME_SETTINGS if k in saved and saved[k] != now[k]}
    recorded = _recorded_model(saved_file_data)
    if recorded is not None and recorded.get("content") not in (None, model["content"]):
        changed["model"] = tuple(f"{m.get('path')} (files {str(m.get('content'))[:12]})" for m in (recorded, model))
    recorded_data = saved_file_data.get("data") if isinstance(saved_file_data.get("data"), dict) else {}
    other_data = sorted(name for name in (data or {}) if recorded_data.get(name) not in (None, data[name]))
    if other_data:
        changed["data"] = tuple({name: f"files {str(d[name])[:12]}" for name in other_data} for d in (recorded_data, data))
    recorded_budgets = saved_file_data.get("budgets") if isinstance(saved_file_data.get("budgets"), dict) else {}
    other_budgets = sorted(name for name in (budgets or {}) if recorded_budgets.get(name) not in (None, budgets[name]))
    if other_budgets:
        changed["budgets"] = tuple({name: _budget_changes(recorded_budgets[name], budgets[name], side)
                                    for name in other_budgets} for side in (0, 1))
    if changed:
        shown = "; ".join(f"{k}: recorded {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise BenchError(f"--resume: {config.out} was run with other settings ({shown}). Resuming would mix them "
                         "in one table: repeat the recorded settings, or write to another --out.")


def _budget_changes(old: Any, new: Any, side: int) -> Any:
    """The fields of a budget that differ between ``old`` and ``new``, as one side (0: old, 1: new) has them."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return (old, new)[side]
    return {k: (old, new)[side].get(k) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def run_benchmark(
    config: BenchConfig,
    show_progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the benchmark; return every record in ``runs.jsonl``.

    Raises :class:`~hf_lowdata.bench.results.OutputFolderBusyError` while another process writes ``out``.
    """
    validate(config)
    with locked_output(config.out):
        return _run_benchmark_locked(config, show_progress, on_record)


def _run_benchmark_locked(
    config: BenchConfig, show_progress: bool, on_record: Callable[[dict[str, Any]], None] | None
) -> list[dict[str, Any]]:
    out = Path(config.out)
    runs_path = out / RUNS_FILE
    if runs_path.exists() and runs_path.stat().st_size > 0 and not config.resume:
        raise BenchError(
            f"{runs_path} already holds results. Pass --resume to continue that benchmark (finished runs are "
            "skipped), or choose another --out; nothing was overwritten."
        )
    model = model_identity(config.model)
    data, budgets = dataset_digests(config), method_budgets(config.methods)
    _check_resumed_settings(config, out / "config.json", model, data, budgets)
    if config.resume:  # datasets and methods of earlier invocations keep their entries, for a later --resume
        recorded = _read_settings(out / "config.json")
        data = {**(recorded["data"] if isinstance(recorded.get("data"), dict) else {}), **data}
        budgets = {**(recorded["budgets"] if isinstance(recorded.get("budgets"), dict) else {}), **budgets}
    repair_tail(runs_path)
    done = finished_keys(read_records(runs_path))
    model_name = model["name"]
    specs = plan_runs(config)
    planned = [s.key(model_name) for s in specs]
    todo = [s for s, key in zip(specs, planned) if key not in done]
    loaded: dict[str, DatasetSplits] = {}
    for dataset in dict.fromkeys(s.dataset for s in todo):  # every data error before the first run, not hours in
        for name in dict.fromkeys([dataset, *config.ood_datasets]):
            _load(config, name, loaded)
        for name in config.ood_datasets:
            if name != dataset:
                check_label_space(loaded[dataset].train, loaded[name].train)
    env = environment()
    # (a kill leaves the previous settings file whole; synced, so a crash never leaves it empty)
    atomic_write_text(out / "config.json", json.dumps({
        "config": {**asdict(config), "data_dir": str(config.data_dir), "out": str(config.out)},
        "model": model, "data": data, "budgets": budgets, "environment": env}, indent=2, default=str))
    quiet_libraries()
    cache = SharedCache()
    bar = _progress_bar(len(specs), len(specs) - len(todo), show_progress)
    try:
        for i, spec in enumerate(todo):
            splits = loaded[spec.dataset]
            ood = {name: loaded[name] for name in config.ood_datasets if name != spec.dataset}
            bar.set_description(f"{spec.dataset} {spec.method} k={spec.k or '-'} n={spec.n or '-'} seed={spec.seed}")
            record = execute_run(spec, splits, ood, config, cache, env, model_name, model["content"])
            append_record(runs_path, record)
            if on_record is not None:
                on_record(record)
            bar.update(1)
            if (i + 1) % max(1, config.report_every) == 0:
                write_report(read_records(runs_path), out, planned)
    finally:
        bar.close()
    records = read_records(runs_path)
    write_report(records, out, planned)
    return records


def _load(config: BenchConfig, name: str, loaded: dict[str, DatasetSplits]) -> DatasetSplits:
    if name not in loaded:
        # Public corpora have a few empty lines (cr, mpqa): drop them, and say so in the records.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            splits = load_data(Path(config.data_dir) / name, empty_text="drop")
        notes = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
        if notes:
            splits = replace(splits, meta={**splits.meta, "load_warnings": notes})
        if splits.test is None:
            raise BenchError(f"Dataset {name!r} has no test file; the benchmark tests on test.jsonl.")
        loaded[name] = splits
    return loaded[name]


def execute_run(
    spec: RunSpec,
    splits: DatasetSplits,
    ood: dict[str, DatasetSplits],
    config: BenchConfig,
    cache: SharedCache,
    env: dict[str, Any],
    model_name: str,
    model_content: str | None = None,
) -> dict[str, Any]:
    """One run: draw the task, train, test in- and out-of-domain, measure; never raises for a
    failing method (the record says ``status: failed`` with the error). ``model_content``: the digest of
    the model's files, recorded so that the report keeps apart two models whose folders share a name."""
    from transformers import set_seed

    record: dict[str, Any] = {
        "run_key": spec.key(model_name),
        **asdict(spec),
        "model": model_name,
        "model_content": model_content,
        "versions": {k: env[k] for k in ("hf_lowdata", "torch", "transformers", "peft", "accelerate", "python")},
        "machine": {k: env[k] for k in ("platform", "cpu_count", "torch_threads", "cuda")},
        # the device the run trained on: --device cpu on a GPU machine trains on the CPU, whatever "machine" says
        "device": str(default_device(config.device)),
        "precision": "bf16" if config.bf16 else "fp32",
        "options": dict(config.options),  # settings outside the run key: the report keeps them apart
        "dev_k": config.dev_k,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            # Never train on a sentence the run is tested on (in-domain or out-of-domain).
            test_texts = [t for d in (splits, *ood.values()) if d.test is not None for t in d.test.texts]
            task = make_few_shot_task(
                splits, seed=spec.seed, k=spec.k, n=spec.n, dev_k=config.dev_k,
                unlabelled=spec.unlabelled, label_noise=spec.label_noise, exclude_texts=test_texts,
            )
        record["data_warnings"] = [*splits.meta.get("load_warnings", []),
                                   *(str(w.message) for w in caught if issubclass(w.category, DataWarning))]
        record["labelled_examples"] = len(task.labelled)
        # the pool as drawn: a small training split gives fewer texts than asked for (cr: 1,704 of 2,000)
        record["unlabelled_examples"] = len(task.unlabelled) if task.unlabelled is not None else 0
        record["pool_excluded_as_test"] = task.excluded_from_pool
        method = get_method(spec.method)
        with tempfile.TemporaryDirectory(prefix="hf_lowdata_run_") as work:
            ctx = RunContext(model=config.model, seed=spec.seed, work_dir=Path(work), cache=cache,
                             options=run_options(config),
                             device=config.device, bf16=config.bf16, quiet=True)
            set_seed(spec.seed)
            with PeakMemory() as memory:
                with Timer() as train_timer:
                    fitted = method.fit(task, ctx)
                assert splits.test is not None
                with Timer() as infer_timer:
                    predictions = fitted.predict(splits.test.texts)
                infer_per_1k = 1000 * infer_timer.seconds / len(splits.test)
                if fitted.caches_features:  # time the real cost, not a cache hit
                    sample = splits.test.texts[:INFERENCE_TIMING_SAMPLE]
                    with Timer() as sample_timer:
                        fitted.predict_proba(sample, use_cache=False)
                    infer_per_1k = 1000 * sample_timer.seconds / len(sample)
                ood_scores = {}
                for name, other in ood.items():
                    assert other.test is not None
                    ood_pred = fitted.predict(other.test.texts)
                    ood_scores[name] = {
                        "accuracy": accuracy(other.test.labels, ood_pred),
                        "macro_f1": macro_f1(other.test.labels, ood_pred, other.test.num_labels),
                    }
            adapter_bytes = directory_bytes(fitted.save(Path(work) / "saved"))
        labels = splits.test.labels
        result = dict(
            status="ok",
            accuracy=accuracy(labels, predictions),
            macro_f1=macro_f1(labels, predictions, splits.test.num_labels),
            ood=ood_scores,
            ood_accuracy={name: s["accuracy"] for name, s in ood_scores.items()},
            train_seconds=round(train_timer.seconds, 3),
            step_seconds_median=fitted.train_step_seconds,
            optimizer_step_seconds_median=fitted.optimizer_step_seconds,
            inference_seconds_per_1k=round(infer_per_1k, 3),
            test_examples=len(splits.test),
            peak_rss_mb=round(memory.peak_rss / 2**20, 1),
            peak_cuda_mb=round(memory.peak_cuda / 2**20, 1) if memory.peak_cuda else None,
            trainable_params=int(fitted.trainable_parameters),
            adapter_bytes=int(adapter_bytes),
            fit_notes=dict(fitted.notes),
        )
        try:  # a value the results file cannot hold (a method's notes with an array) fails this run, not the benchmark
            json.dumps(result, default=jsonable)
        except (TypeError, ValueError) as err:
            raise TypeError(f"the run's results cannot be written as JSON ({err}); a method's notes must be "
                            "JSON-serialisable") from err
        record.update(result)
    except Exception as err:  # noqa: BLE001 - a failing method is a result, not a crash
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=8))
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="run", disable=not enabled, dynamic_ncols=True)


def quiet_libraries() -> None:
    """Training logs of 100s of runs drown the progress bar; keep warnings and errors only."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
