"""Image benchmark on EfficientNet-Lite0, Fashion-MNIST / digits: the probe, full fine-tuning, LoRA, FTP and TwinTurbo.

``python -m hf_lowdata.bench.vision --datasets fashion-mnist --shots 1,4,10 --seeds 0-4
--methods probe,full,lora,twin_turbo,twin_turbo_ce --unlabelled 2000 --out runs/vision``

Same protocol and outputs as ``hf-lowdata bench`` (``runs.jsonl`` appended run by run, ``--resume``,
``summary.md``, plots): k labelled images per class per seed (nested in k), an unlabelled pool of
``--unlabelled`` further training images, the whole official test split (Fashion-MNIST: 10,000).
The frozen backbone's feature maps are computed once per image and cached on disk (fp16), so the
images of a dataset pass through the backbone once for all runs of the probe and TwinTurbo; ``full``,
``lora`` and ``ftp`` train the backbone with the text methods' budgets and trainer
(:mod:`hf_lowdata.vision.finetune`), so each of their runs passes the scored images through its own model. Images are resized to
``--image-size`` (a multiple of 32; 128 px gives a 4x4 map = 16 tokens of width 1280).

``--dev N`` scores on N held-out *training* images instead of the test split (the datasets have no
official dev split): the way to choose settings (``--config``) without looking at test results. Budget
fields (``--config learning_rate=1e-3``) are accepted only there: test runs use the fixed budgets.
Those records name the dataset ``"<name> (dev N)"`` so they never mix with test results.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..budgets import Budget, image_budget
from ..cli import _int_list, _name_list, parse_options
from ..data import DataError
from ..features import (
    FeatureCache,
    TokenStateDataset,
    image_token_states,
    mean_pool_states,
    model_fingerprint,
)
from ..methods import MethodConfigError, RunContext, SharedCache, get_method
from ..methods.base import (
    count_trainable,
    directory_bytes,
    fixed_option_conflicts,
    unknown_options,
    unlabelled_pool_size,
)
from ..methods.probe import save_probe_head
from ..methods.twin_turbo import METHOD_VARIANTS, build_config, predict_from_states, train_projector
from ..paths import cache_root
from ..vision import ImageSet, load_digits, load_fashion_mnist, make_image_few_shot_task, split_off_dev
from ..vision.efficientnet import VisionAssetError, efficientnet_lite0_path, load_efficientnet_lite0
from ..vision.finetune import (
    BATCHNORM_MODES,
    BATCHNORM_OPTION,
    IMAGE_BACKBONE_METHODS,
    fit_image_classifier,
    predict_images,
)
from .measure import PeakMemory, Timer, accuracy, environment, macro_f1
from .report import write_report
from .results import (
    OutputFolderBusyError,
    append_record,
    finished_keys,
    locked_output,
    read_records,
    repair_tail,
)

DATASETS = {"fashion-mnist": load_fashion_mnist, "digits": load_digits}
METHODS = ("probe", *IMAGE_BACKBONE_METHODS, *METHOD_VARIANTS)
#: Budget fields a ``--config`` may set, on a ``--dev`` split only.
BUDGET_FIELDS = frozenset(f.name for f in fields(Budget)) - {"options"}
#: Images timed end to end (backbone + head, no cache) for the inference figure.
TIMING_SAMPLE = 128


@dataclass
class VisionBenchConfig:
    """One image benchmark invocation (see the module docstring)."""

    datasets: list[str]
    methods: list[str]
    out: Path
    shots: list[int] = field(default_factory=lambda: [1, 4, 10])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    unlabelled: int = 2000
    image_size: int = 128
    test_limit: int | None = None
    feature_cache_dir: Path | None = None
    resume: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    budget_scale: float = 1.0
    dev: int = 0


def _validate(config: VisionBenchConfig) -> None:
    unknown = [d for d in config.datasets if d not in DATASETS] + [m for m in config.methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"Unknown dataset/method {unknown}; datasets: {sorted(DATASETS)}, methods: {list(METHODS)}.")
    if config.image_size <= 0 or config.image_size % 32:
        raise SystemExit(f"--image-size must be a positive multiple of 32 (EfficientNet's padding), got "
                         f"{config.image_size}.")
    bounds = {"--shots": (min(config.shots, default=1), 1), "--unlabelled": (config.unlabelled, 0),
              "--dev": (config.dev, 0), "--test-limit": (1 if config.test_limit is None else config.test_limit, 1)}
    for flag, (value, least) in bounds.items():
        if value < least:
            raise SystemExit(f"{flag} must be at least {least}, got {value}.")
    if not config.budget_scale > 0:
        raise SystemExit(f"--budget-scale must be positive, got {config.budget_scale}.")
    # options reach the methods' configs (budgets come from --budget-scale)
    budget_fields = sorted(BUDGET_FIELDS & set(config.options))
    if budget_fields and not config.dev:
        raise SystemExit(f"--config {', '.join(budget_fields)}: budget fields may be changed only on a dev split "
                         "(--dev N), to choose them; test runs use the fixed budgets of hf_lowdata/budgets.py.")
    batchnorm = config.options.get(BATCHNORM_OPTION, "frozen")
    if batchnorm not in BATCHNORM_MODES:
        raise SystemExit(f"--config batchnorm={batchnorm}: choose one of {list(BATCHNORM_MODES)}.")
    also_known = [BATCHNORM_OPTION] if set(IMAGE_BACKBONE_METHODS) & set(config.methods) else []
    message = unknown_options(config.methods, list(config.options),
                              also_known=[*also_known, *(sorted(BUDGET_FIELDS) if config.dev else ())]
                              ) or fixed_option_conflicts(config.methods, config.options)
    if message:
        raise SystemExit(message)
    for method in config.methods:  # their values too, before any image passes the backbone
        try:
            get_method(method).check_options(RunContext(options=method_options(config)))
        except MethodConfigError as err:
            raise SystemExit(str(err)) from err
    runs = Path(config.out) / "runs.jsonl"
    if runs.exists() and runs.stat().st_size and not config.resume:
        raise SystemExit(f"{runs} already holds results: pass --resume or choose another --out.")


def method_options(config: VisionBenchConfig) -> dict[str, Any]:
    """The run's method options: ``--config`` without the budget fields (a dev split's, read by :func:`_budget`)."""
    return {k: v for k, v in config.options.items() if k not in BUDGET_FIELDS}


class _Probe:
    """Logistic regression on mean-pooled feature maps (the image counterpart of ``probe``)."""

    def __init__(self, ctx: RunContext, label_names: Sequence[str], image_size: int) -> None:
        from sklearn.linear_model import LogisticRegression

        probe = get_method("probe")  # the text probe's options (C, class_weight), read as it reads them
        self.head = LogisticRegression(C=probe.inverse_regularisation(ctx), max_iter=2000, random_state=ctx.seed,
                                       class_weight=None if probe.class_weight_choice(ctx) == "none" else "balanced")
        self.label_names = list(label_names)
        self.image_size = image_size

    def fit(self, states: Sequence[torch.Tensor], labels: np.ndarray) -> _Probe:
        self.head.fit(mean_pool_states(states, normalize=True), labels)
        return self

    def predict(self, states: Sequence[torch.Tensor]) -> np.ndarray:
        return self.head.predict(mean_pool_states(states, normalize=True))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the head as the text probe does (its size is the run's ``adapter_bytes``)."""
        return save_probe_head(directory, self.head, {
            "base_model": str(efficientnet_lite0_path()), "modality": "image", "label_names": self.label_names,
            "pooling": "mean", "normalize": True, "image_size": self.image_size,
        })


def run_vision_benchmark(config: VisionBenchConfig) -> list[dict[str, Any]]:
    """Run (or resume) every (dataset, k, seed, method); return all records (one process per ``out``)."""
    _validate(config)
    with locked_output(config.out):
        return _run_vision_locked(config)


def _run_vision_locked(config: VisionBenchConfig) -> list[dict[str, Any]]:
    out = Path(config.out)
    runs_path = out / "runs.jsonl"
    repair_tail(runs_path)
    done = finished_keys(read_records(runs_path))
    env = environment()
    cache = FeatureCache(config.feature_cache_dir or cache_root() / "features")
    backbone = load_efficientnet_lite0().efficientnet
    model_key = model_fingerprint(efficientnet_lite0_path(), "image", config.image_size)
    planned = [_run_key({**_spec(config, dataset, method, seed, k), **_settings(config)}, config.image_size)
               for dataset in config.datasets for k in config.shots for seed in config.seeds
               for method in config.methods]
    for dataset in config.datasets:
        train, test = DATASETS[dataset]("train"), DATASETS[dataset]("test")
        label = _dataset_label(config, dataset)
        if config.dev:
            train, test = split_off_dev(train, config.dev)
        if config.test_limit:  # the first N of whichever split is scored (test, or the dev split)
            test = test.subset(range(min(config.test_limit, len(test))))
        test_states = image_token_states(cache, backbone, test.images, config.image_size, model_key)
        for k in config.shots:
            for seed in config.seeds:
                task = make_image_few_shot_task(train, test, k, seed, unlabelled=config.unlabelled, name=dataset)
                for method in config.methods:
                    spec = _spec(config, dataset, method, seed, k)
                    key = _run_key({**spec, **_settings(config)}, config.image_size)
                    if key in done:
                        continue
                    record = _execute(spec, key, task, test_states, backbone, cache, model_key, config, env)
                    append_record(runs_path, record)
                    write_report(read_records(runs_path), out, planned)
                    print(f"{label} {method} k={k} seed={seed}: {record.get('accuracy', record.get('error'))}",
                          flush=True)
    records = read_records(runs_path)
    write_report(records, out, planned)
    return records


def _dataset_label(config: VisionBenchConfig, dataset: str) -> str:
    """The record's dataset name: dev-split runs never share rows with test runs."""
    return f"{dataset} (dev {config.dev})" if config.dev else dataset


def _spec(config: VisionBenchConfig, dataset: str, method: str, seed: int, k: int) -> dict[str, Any]:
    """One run's identity; the unlabelled pool only for methods that use one (as in the text bench)."""
    pool = unlabelled_pool_size(method, config.unlabelled)
    return {"dataset": _dataset_label(config, dataset), "method": method, "seed": seed, "k": k, "n": None,
            "label_noise": 0.0, "unlabelled": pool}


def _settings(config: VisionBenchConfig) -> dict[str, Any]:
    """What else shapes a run's result: part of its key (a resume with other settings runs them anew,
    never skips them as done) and of its record (the report keeps them in separate rows)."""
    settings: dict[str, Any] = {"options": dict(sorted(config.options.items()))}
    if config.budget_scale != 1.0:
        settings["budget_scale"] = config.budget_scale
    if config.test_limit:
        settings["test_limit"] = config.test_limit
    return settings


def _run_key(spec: dict[str, Any], image_size: int) -> str:
    import json

    return json.dumps({**spec, "model": f"efficientnet-lite0@{image_size}px"}, sort_keys=True)


def _execute(spec, key, task, test_states, backbone, cache, model_key, config, env) -> dict[str, Any]:
    record: dict[str, Any] = {"run_key": key, **spec, "model": f"efficientnet-lite0@{config.image_size}px",
                              "versions": {k: env[k] for k in ("hf_lowdata", "torch", "transformers", "peft")},
                              "machine": {k: env[k] for k in ("platform", "cpu_count", "torch_threads", "cuda")},
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "labelled_examples": len(task.labelled),
                              "unlabelled_examples": len(task.unlabelled) if task.unlabelled is not None and spec["unlabelled"]
                              else 0, **_settings(config)}
    try:
        def states(images: ImageSet) -> list[torch.Tensor]:
            return image_token_states(cache, backbone, images.images, config.image_size, model_key)

        with tempfile.TemporaryDirectory(prefix="hf_lowdata_vision_") as work, PeakMemory() as memory:
            labelled_states = states(task.labelled)
            unlabelled_states = states(task.unlabelled) if task.unlabelled is not None and spec["unlabelled"] else None
            method = spec["method"]
            ctx = RunContext(seed=spec["seed"], work_dir=Path(work), cache=SharedCache(), quiet=True,
                             options=method_options(config),
                             budget=_budget(config, "twin_turbo" if method in METHOD_VARIANTS else method))
            torch.manual_seed(spec["seed"])
            with Timer() as train_timer:
                if method == "probe":
                    fitted: Any = _Probe(ctx, task.label_names, config.image_size).fit(
                        labelled_states, task.labelled.labels)
                    predict, trainable = fitted.predict, fitted.head.coef_.size + fitted.head.intercept_.size
                    saved = directory_bytes(fitted.save(Path(work) / "probe"))
                elif method in IMAGE_BACKBONE_METHODS:
                    model = fit_image_classifier(method, task, ctx, config.image_size)
                    trainable = count_trainable(model)
                    model.save_pretrained(Path(work) / "model")
                    saved = directory_bytes(Path(work) / "model")
                else:
                    model, saved_dir = _fit_twin_turbo(method, task, labelled_states, unlabelled_states, ctx, Path(work))
                    predict = lambda s: predict_from_states(model, s).argmax(1)  # noqa: E731
                    trainable = count_trainable(model)
                    saved = directory_bytes(saved_dir)
            sample = task.test.images[:TIMING_SAMPLE]
            if method in IMAGE_BACKBONE_METHODS:  # its own backbone: every scored image passes it
                predictions = predict_images(model, task.test.images, config.image_size)
                with Timer() as infer_timer:
                    predict_images(model, sample, config.image_size)
            else:
                predictions = predict(test_states)
                with Timer() as infer_timer:  # backbone + head on raw images, no cache
                    predict(image_token_states(FeatureCache(), backbone, sample, config.image_size, model_key))
        labels = task.test.labels
        record.update(
            status="ok", accuracy=accuracy(labels, predictions),
            macro_f1=macro_f1(labels, predictions, task.num_labels), ood={}, ood_accuracy={},
            train_seconds=round(train_timer.seconds, 3),
            inference_seconds_per_1k=round(1000 * infer_timer.seconds / len(sample), 3),
            test_examples=len(labels), peak_rss_mb=round(memory.peak_rss / 2**20, 1), trainable_params=int(trainable),
            adapter_bytes=int(saved),
        )
    except Exception as err:  # noqa: BLE001 - a failing run is a result
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc(limit=8))
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return record


def _budget(config: VisionBenchConfig, name: str) -> Budget:
    """``name``'s image budget (:func:`~hf_lowdata.budgets.image_budget`), scaled by ``--budget-scale``, with the
    budget fields a ``--dev`` run's ``--config`` sets."""
    budget = image_budget(name).scaled(config.budget_scale)
    changed = {k: type(getattr(budget, k))(v) for k, v in config.options.items() if k in BUDGET_FIELDS}
    return replace(budget, **changed) if changed else budget


def _fit_twin_turbo(method, task, labelled_states, unlabelled_states, ctx, work: Path):
    from peft import get_peft_model

    config = build_config(ctx, METHOD_VARIANTS[method])
    base = load_efficientnet_lite0(task.num_labels, list(task.label_names), seed=ctx.seed)
    model = get_peft_model(base, config)
    labelled = TokenStateDataset(labelled_states, task.labelled.labels.tolist())
    unlabelled = TokenStateDataset(unlabelled_states) if unlabelled_states is not None else None
    trainer, _ = train_projector(model, labelled, unlabelled, ctx.budget_for("twin_turbo"), ctx, method, config,
                                 class_weights=get_method(method).class_weights(task, ctx))
    trainer.model.save_pretrained(work / "adapter")
    return trainer.model, work / "adapter"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hf_lowdata.bench.vision", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", type=_name_list, default=["fashion-mnist"], help=f"of {sorted(DATASETS)}")
    p.add_argument("--methods", type=_name_list, default=["probe", "twin_turbo"], help=f"of {list(METHODS)}")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shots", type=_int_list, default=[1, 4, 10])
    p.add_argument("--seeds", type=_int_list, default=[0, 1, 2, 3, 4])
    p.add_argument("--unlabelled", type=int, default=2000,
                   help="unlabelled pool for the methods that use one (default 2000, as the text bench; 0 = none)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--test-limit", type=int, default=None, help="score on the first N test (or --dev) images (smoke runs)")
    p.add_argument("--dev", type=int, default=0, metavar="N",
                   help="score on N held-out training images instead of the test split (for choosing settings)")
    p.add_argument("--feature-cache-dir", type=Path, default=None, help="default: ~/.cache/hf_lowdata/features")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                   help="method options (TwinTurboConfig's, LoRA's r, ...); budget fields with --dev only")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply the training steps (smoke runs)")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    try:
        records = run_vision_benchmark(VisionBenchConfig(
            datasets=args.datasets, methods=args.methods, out=args.out, shots=args.shots, seeds=args.seeds,
            unlabelled=args.unlabelled, image_size=args.image_size, test_limit=args.test_limit,
            feature_cache_dir=args.feature_cache_dir, resume=args.resume, options=parse_options(args.config),
            budget_scale=args.budget_scale, dev=args.dev))
    except (OutputFolderBusyError, DataError, VisionAssetError) as err:  # a message for the user, not a traceback
        raise SystemExit(f"error: {err}") from None
    failed = [r for r in records if r.get("status") == "failed"]
    print(f"{len(records) - len(failed)} runs ok, {len(failed)} failed; results in {args.out}/summary.md")
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
