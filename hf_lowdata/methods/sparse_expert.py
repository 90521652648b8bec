"""``sparse_expert`` (SMAT) and its ablations, for the benchmark, the demo and the CLI.

Protocol (spec section 3, "for this project"): meta-train a SparseExpert adapter on episodes from
*source* datasets (default ``sst5,mr,mpqa``, read from ``source_dir``, by default the benchmark's
``--data-dir``), then for each few-shot task: route its support set -> merge into plain dense
weights -> optionally fine-tune on the support set (``finetune=lora`` by default, with the ``lora``
baseline's budget, or ``full`` / ``none``) -> predict with the cosine ProtoNet head
``10 cos(f(x), c_k)`` built from the support set.

Meta-training is paid once per (model, sources, settings, meta seed): the binarized adapter is cached
under ``$HF_LOWDATA_CACHE/sparse_expert/<key>/`` (default ``~/.cache/hf_lowdata``; option
``cache_dir``), written to a temporary folder and renamed, so a kill leaves either nothing or a
complete entry; an interrupted meta-training resumes from its last checkpoint. Source examples whose
text occurs in any test split of ``source_dir`` (or in the task's test set) are never meta-trained on.

Variants: ``sparse_expert_dense`` (dense meta-tuning, one always-on mask: the PMF analogue),
``sparse_expert_m4`` (4 experts), ``sparse_expert_tau80`` / ``sparse_expert_tau95`` (sparsity 0.8 /
0.95), ``sparse_expert_pretrained`` (no meta-tuning: same head and test-time fine-tuning on the
pretrained encoder). ``lora`` is the project's no-meta-tuning baseline with its own linear head.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .. import paths
from ..budgets import Budget, get_budget
from ..data import (
    DataError,
    FewShotTask,
    TextDataset,
    encode_texts,
    load_data,
    normalize_text,
    texts_and_parts,
)
from ..inference import mean_pooled_embeddings
from ..leftovers import remove_dead_leftovers, untouched_for
from ..models import (
    load_encoder,
    load_tokenizer,
    model_content_digest,
    model_id,
    resolve_model_path,
    safetensors_error,
    token_budget,
)
from ..paths import DATA_DIR_ENV
from .base import (
    DevSelector,
    FittedClassifier,
    Method,
    RunContext,
    _run_callback,
    choice_option,
    default_device,
    method_config,
    number_option,
    register_method,
)
from .finetune import lora_target_modules

BUDGET_NAME = "sparse_expert"
DEFAULT_SOURCES = ("sst5", "mr", "mpqa")
#: Option the benchmark runner sets to its ``--data-dir`` (the default ``source_dir``).
BENCH_DATA_DIR_OPTION = "bench_data_dir"
#: Options that shape meta-training (:class:`MetaTrainingPlan`) and where it reads and caches.
META_TRAINING_OPTIONS = frozenset({"source_dir", "sources", "num_experts", "target_sparsity", "meta_steps", "meta_batch",
                                   "meta_lr", "meta_seed", "query_per_class", "cache_dir", "binary_masks_from"})
#: Environment variable naming the source folder when neither option is given.
META_FILE = "meta_training.json"
#: Written into each meta-training checkpoint: the objective's per-step history and the seconds spent so far, so
#: that the summary of a resumed meta-training covers every step.
META_PROGRESS_FILE = "meta_training_progress.json"
FINETUNE_MODES = ("none", "lora", "full")
FINETUNE_ERROR = "finetune must be 'none', 'lora' or 'full', got {mode!r}."
#: Part of the cache key; bumped when the code changes what a plan meta-trains, so an adapter cached by an
#: older version is not reused (2: sources keep each repeated text once, and drop those with conflicting labels).
META_TRAINING_REVISION = 2


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where meta-trained adapters are cached: ``cache_dir``, ``$HF_LOWDATA_CACHE`` or ``~/.cache/hf_lowdata``."""
    return paths.cache_root(cache_dir) / "sparse_expert"


def dataset_texts(folder: Path) -> list[str]:
    """Every text of every split (train, dev, test) of the dataset in ``folder`` (a pair's two texts too)."""
    splits = load_data(folder, empty_text="drop")
    return texts_and_parts(t for part in (splits.train, splits.dev, splits.test) if part is not None for t in part.texts)


def evaluated_texts(task: FewShotTask, ctx: RunContext) -> list[str]:
    """The texts of the evaluated dataset, never meta-trained on: the whole dataset when the benchmark
    names its folder (``<--data-dir>/<task name>``), else the task's labelled, dev and test texts.

    Datasets overlap: SST-2 is SST-5 without its neutral class, and 4,370 of its training sentences are
    in MR's. Holding out only the test split let meta-training see the very support examples a
    meta-test task is then given, with their labels. A pair task holds out each of its two texts as well
    (:func:`~hf_lowdata.data.texts_and_parts`): a pair task built on sst2's sentences is as leaky.
    """
    bench_dir = ctx.options.get(BENCH_DATA_DIR_OPTION)
    if bench_dir and (Path(bench_dir) / task.name).is_dir():
        try:
            return dataset_texts(Path(bench_dir) / task.name)
        except DataError as err:
            raise DataError(f"SparseExpert never meta-trains on a text of the evaluated dataset, and {task.name} "
                            f"cannot be read: {err}") from err
    return texts_and_parts(t for part in (task.labelled, task.dev, task.test) if part is not None for t in part.texts)


def full_finetune_budget(ctx: RunContext) -> Budget:
    """The budget of ``finetune=full``: full fine-tuning's own, with the fields the run changed from SparseExpert's
    budget (``--config max_steps=...``, a preset). Taking the run's budget whole gave full fine-tuning the LoRA
    learning rate (2e-3, 40x its own) as soon as any budget field was set."""
    full = get_budget("full")
    if ctx.budget is None:
        return full
    ours = get_budget(BUDGET_NAME)
    changed = {f.name: getattr(ctx.budget, f.name) for f in fields(Budget)
               if f.name != "options" and getattr(ctx.budget, f.name) != getattr(ours, f.name)}
    return replace(full, **changed)


def held_out_texts(source_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """Every text of every test split under ``source_dir`` plus ``extra``: never meta-trained on."""
    texts = set(extra)
    for folder in sorted(p for p in source_dir.iterdir() if p.is_dir()):
        if any((folder / f"test{s}").is_file() for s in (".jsonl", ".csv", ".tsv", ".json")):
            try:
                test = load_data(folder, empty_text="drop").test
            except DataError as err:
                raise DataError(f"SparseExpert never meta-trains on a text of any test split in {source_dir}, and "
                                f"{folder.name} cannot be read: {err}") from err
            if test is not None:
                texts.update(test.texts)
    return sorted(texts)


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        h.update(part)
        h.update(b"\x1e")
    return h.hexdigest()


@dataclass
class MetaTrainingPlan:
    """Everything that determines a meta-trained adapter (and therefore its cache key).

    Args:
        model: model name or folder.
        source_dir: folder holding the source datasets.
        sources: names of the source dataset folders.
        adapter: ``SparseExpertConfig`` keyword arguments.
        objective: ``SparseExpertObjective`` keyword arguments.
        steps: meta-training optimizer steps.
        meta_batch: episodes per optimizer step (gradient accumulation).
        learning_rate: SGD learning rate of the deltas.
        warmup_ratio: linear warm-up fraction of the cosine schedule.
        seed: meta-training seed (episodes, initialisation).
        way / shot / query_per_class: episode shapes.
        max_length: tokens per text.
        exclude_texts: texts never to draw (test sets, the evaluated dataset); the source examples they remove
            enter the key as a digest.
    """

    model: str | None
    source_dir: str
    sources: tuple[str, ...] = DEFAULT_SOURCES
    adapter: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] = field(default_factory=dict)
    steps: int = 100
    meta_batch: int = 4
    learning_rate: float = 5e-4
    warmup_ratio: float = 0.05
    seed: int = 0
    way: tuple[int, int] = (2, 5)
    shot: tuple[int, int] = (1, 8)
    query_per_class: int = 8
    max_length: int = 128
    exclude_texts: tuple[str, ...] = ()
    _pools: dict[str, TextDataset] | None = field(default=None, init=False, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-able data, with the model and source files identified by content."""
        data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.init and f.name != "exclude_texts"}
        data["model"] = model_id(self.model)
        data["revision"] = META_TRAINING_REVISION
        data["model_path"] = str(resolve_model_path(self.model))
        data["model_content"] = model_content_digest(data["model_path"])  # not only its folder's name
        data["source_files"] = {name: self._source_fingerprint(name) for name in self.sources}
        data["source_dir"] = str(Path(self.source_dir).resolve())
        # the source examples the held-out texts remove (not the texts themselves): held-out texts that occur in
        # no source leave the adapter, and so the key, unchanged
        excluded = {normalize_text(t) for t in self.exclude_texts}
        data["excluded_source_texts"] = _digest(*(
            f"{name}\x1f{key}".encode()
            for name, pool in sorted(self.source_pools().items())
            for key in sorted({normalize_text(t) for t in pool.texts} & excluded)
        ))
        return data

    def _source_fingerprint(self, name: str) -> str:
        """A source's ``train.jsonl`` by its bytes; one in another format (CSV, TSV, JSON) by the examples and label
        names read from it (it was recorded as "missing", so an edited file reused a stale adapter)."""
        jsonl = Path(self.source_dir) / name / "train.jsonl"
        if jsonl.is_file():
            return _digest(jsonl.read_bytes())
        pool = self.source_pools().get(name)
        if pool is None:
            return "missing"
        return _digest("\x1f".join(pool.label_names).encode(),
                       *(f"{label}\x1f{text}".encode() for text, label in zip(pool.texts, pool.labels or ())))

    def source_pools(self) -> dict[str, TextDataset]:
        """The training pool of each source found in ``source_dir`` (held-out texts not yet removed); read once."""
        if self._pools is None:
            self._pools = {name: load_data(Path(self.source_dir) / name, empty_text="drop").train
                           for name in self.sources if (Path(self.source_dir) / name).is_dir()}
        return self._pools

    def key(self) -> str:
        described = self.describe()
        described.pop("source_dir")  # the same files elsewhere give the same adapter
        described.pop("model_path")
        return _digest(json.dumps(described, sort_keys=True, default=str).encode())


def meta_train(plan: MetaTrainingPlan, cache_dir: str | os.PathLike | None = None, quiet: bool = True,
               device: str | None = None, callbacks: Sequence[Any] = ()) -> Path:
    """The folder of the meta-trained (binarized) adapter for ``plan``; meta-trains it if not cached.

    ``callbacks``: TrainerCallbacks added to the meta-training (progress, cancellation: a cancelled meta-training
    keeps its last checkpoint and the next call resumes from it)."""
    root = cache_root(cache_dir)
    final = root / plan.key()
    remove_dead_leftovers(root, prefix=plan.key())  # staged copies of killed meta-trainings of this plan
    if final.is_dir() and not (final / META_FILE).is_file():  # (meta_train writes it before the folder goes live)
        raise DataError(f"The cached meta-trained adapter {final} is incomplete (no {META_FILE}). Delete that folder "
                        "and run again to meta-train it anew.")
    if (final / META_FILE).is_file():
        work = root / f"{plan.key()}.work"
        if work.is_dir() and untouched_for(work, 3600.0):  # a cleanup a kill cut short (not a live run's folder)
            shutil.rmtree(work, ignore_errors=True)
        if not (final / "adapter_model.safetensors").is_file() or not (final / "adapter_config.json").is_file():
            raise DataError(
                f"The cached meta-trained adapter {final} is incomplete (no adapter_model.safetensors or "
                "adapter_config.json). Delete that folder and run again to meta-train it anew."
            )
        damaged = safetensors_error(final / "adapter_model.safetensors")
        for name in ("adapter_config.json", META_FILE):
            try:
                json.loads((final / name).read_text())
            except (OSError, ValueError) as err:
                damaged = damaged or f"{name}: {err}"
        if damaged is not None:
            raise DataError(f"The cached meta-trained adapter {final} is damaged ({damaged}). Delete that folder "
                            "and run again to meta-train it anew.")
        return final
    work = root / f"{plan.key()}.work"
    lock = _lock_meta_training(work, final)
    try:
        if (final / META_FILE).is_file():  # another process published it while this one waited
            return meta_train(plan, cache_dir, quiet, device, callbacks)
        return _meta_train(plan, root, final, work, quiet, device, callbacks)
    except BaseException:
        if lock is not None and work.is_dir() and {p.name for p in work.iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(work, ignore_errors=True)  # failed before its first checkpoint: nothing to resume
        raise
    finally:
        if lock is not None:
            lock.close()  # (releases the lock)


#: In a meta-training's work folder: held by the process that meta-trains the plan.
LOCK_FILE = ".lock"


def _lock_meta_training(work: Path, final: Path) -> Any:
    """Wait until no other process on this machine meta-trains the plan whose work folder is ``work``; return the
    open lock file (closing it releases the lock), or ``None``: the plan was published as ``final`` meanwhile, or
    there is no lock (no ``fcntl``: Windows; a process of a distributed launch, whose processes meta-train the plan
    together).

    Two processes meta-training one plan shared its work folder: one resumed from a checkpoint the other was still
    writing or rotating away, and failed. The lock file lives in the work folder, which is removed once the
    adapter is published (or when a meta-training failed before its first checkpoint): a process that waited on a
    removed lock file takes a fresh one, unless the plan was published.
    """
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    told = False
    while not (final / META_FILE).is_file():
        work.mkdir(parents=True, exist_ok=True)
        handle = open(work / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held until the caller closes it
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not told:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    print(f"Waiting for {holder}, which meta-trains the same SparseExpert plan ({work}); its adapter "
                          "is then used here.", file=sys.stderr, flush=True)
                    told = True
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                current = os.path.samestat(os.fstat(handle.fileno()), os.stat(work / LOCK_FILE))
            except FileNotFoundError:
                current = False
            if current:
                handle.seek(0)
                handle.truncate()
                handle.write(f"process {os.getpid()}")
                handle.flush()
                return handle
        except BaseException:
            handle.close()
            raise
        handle.close()  # removed while this process waited: take the new one
    return None


def _meta_train(plan: MetaTrainingPlan, root: Path, final: Path, work: Path, quiet: bool,
                device: str | None, callbacks: Sequence[Any] = ()) -> Path:
    """Meta-train ``plan`` in ``work`` (resuming from its last complete checkpoint) and publish it as ``final``."""
    from peft import get_peft_model
    from transformers import set_seed

    from ..training import LowDataTrainer, few_shot_training_args, last_complete_checkpoint
    from ..training.episodes import EpisodeDataset, TextSource, usable_classes
    from ..tuners.sparse_expert import SparseExpertConfig, SparseExpertObjective

    root.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(plan.model)
    pools = plan.source_pools()
    missing = [name for name in plan.sources if name not in pools]
    if missing:
        raise DataError(f"Source dataset {missing[0]!r} not found in {plan.source_dir}; set sources= or source_dir=.")
    sources = [TextSource(pools[name], tokenizer, plan.max_length, name, exclude_texts=plan.exclude_texts)
               for name in plan.sources]
    need = plan.shot[0] + plan.query_per_class
    unused = [s.name for s in sources if len(usable_classes(s.labels, need)) < 2]
    if unused:
        if len(unused) == len(sources):
            raise DataError(
                f"No source dataset keeps two classes of {need} examples once the held-out texts are removed "
                f"({', '.join(f'{s.name}: {s.excluded} removed' for s in sources)}). Choose other sources with "
                "--config sources=a,b,c."
            )
        warnings.warn(
            f"Meta-training skips {', '.join(unused)}: once the texts of the evaluated dataset and of every test split "
            f"are removed, fewer than two of its classes keep {need} examples (SST-5 keeps only its neutral class "
            "when SST-2 is evaluated).", UserWarning, stacklevel=2)
    episodes = EpisodeDataset([s for s in sources if s.name not in unused], plan.steps * plan.meta_batch,
                              seed=plan.seed, way=plan.way, shot=plan.shot, query_per_class=plan.query_per_class)
    set_seed(plan.seed)
    model = get_peft_model(load_encoder(plan.model).train(), SparseExpertConfig(**plan.adapter))
    budget = Budget(learning_rate=plan.learning_rate, epochs=1, min_steps=plan.steps, max_steps=plan.steps,
                    batch_size=1, weight_decay=0.0, warmup_ratio=plan.warmup_ratio, max_length=plan.max_length)
    use_cpu = (device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
    args = few_shot_training_args(
        str(work), budget, 1, seed=plan.seed, gradient_accumulation_steps=plan.meta_batch, lr_scheduler_type="cosine",
        save_strategy="steps", save_steps=max(1, plan.steps // 10), save_total_limit=1, use_cpu=use_cpu,
        logging_steps=max(1, plan.steps // 20),
    )
    if args.world_size > 1:  # the plan's meta-batch is global: each process accumulates its share of distinct episodes
        if plan.meta_batch % args.world_size:
            raise ValueError(f"meta_batch {plan.meta_batch} does not split over {args.world_size} processes: the "
                             "adapter would differ from the one-process adapter cached under the same key. Use a "
                             "process count that divides it, or one process.")
        args.gradient_accumulation_steps = plan.meta_batch // args.world_size
    trainer = _progress_keeping(LowDataTrainer)(model=model, args=args, train_dataset=episodes,
                                                objective=SparseExpertObjective(**plan.objective),
                                                callbacks=list(callbacks))
    if quiet:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    resume = last_complete_checkpoint(work)
    trainer.train(resume_from_checkpoint=resume)
    seconds = trainer.meta_training_seconds()
    meta_trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    tuner = trainer.model.base_model
    tuner.binarize_masks()
    sparsity = tuner.mask_sparsity()
    if not trainer.is_world_process_zero():  # the main process publishes the (identical) adapter
        trainer.accelerator.wait_for_everyone()
        return final
    tmp = root / f"{plan.key()}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    mask_entries = sum(layer.sparse_expert_delta["default"].numel() for _, layer in tuner.expert_layers())
    mask_bytes = sum(layer.sparse_expert_bits["default"].numel() for _, layer in tuner.expert_layers())
    num_experts = tuner.peft_config["default"].num_experts
    summary = {
        "plan": plan.describe(),
        "seconds": round(seconds, 1),
        "resumed_from": resume,
        "excluded_source_examples": {s.name: s.excluded for s in sources},
        "repeated_source_examples": {s.name: {"duplicates": s.duplicates, "conflicting_labels": s.conflicting}
                                     for s in sources},
        "unused_sources": unused,
        "trainable_parameters": meta_trained,
        "mask_sparsity": [round(float(v), 4) for v in sparsity],
        "mask_entries_per_expert": mask_entries,
        "mask_bytes": mask_bytes,
        "mask_bits_per_entry": 8 * mask_bytes / (num_experts * mask_entries),
        "adapter_bytes": sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file()),
        "history": trainer.objective.history,
    }
    if trainer.history_from_step is not None:  # resumed from a checkpoint that kept no history (an older version's)
        summary["history_from_step"] = trainer.history_from_step
        summary["history_note"] = (f"{resume} kept no per-step history: the history (and seconds) cover only the "
                                   f"steps after step {trainer.history_from_step}.")
    (tmp / META_FILE).write_text(json.dumps(summary, indent=1))
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished the same plan first: keep its result
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return final


def _progress_keeping(trainer_class: type) -> type:
    """``trainer_class`` (LowDataTrainer) that keeps the seconds spent in every checkpoint and restores them on
    resume, so that the summary of a meta-training resumed after a kill counts every session, as its history
    covers every step (the trainer keeps the objective's history: ``objective_state.json``). The file is written
    before ``trainer_state.json``, which marks a checkpoint complete, so a complete checkpoint always holds it."""
    from ..training.trainer import OBJECTIVE_JSON_FILE

    class ProgressKeepingTrainer(trainer_class):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.carried_seconds = 0.0
            self.history_from_step: int | None = None
            self.started = time.perf_counter()

        def meta_training_seconds(self) -> float:
            return self.carried_seconds + time.perf_counter() - self.started

        def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
            super()._save_optimizer_and_scheduler(output_dir)
            if self.args.should_save:
                paths.atomic_write_text(Path(output_dir) / META_PROGRESS_FILE, json.dumps({
                    "seconds": self.meta_training_seconds(), "history_from_step": self.history_from_step}))

        def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
            with warnings.catch_warnings():  # a history not kept is said in the summary (history_note)
                warnings.filterwarnings("ignore", message=f".*has no {OBJECTIVE_JSON_FILE}", category=UserWarning)
                super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is None:
                return
            saved = Path(checkpoint) / META_PROGRESS_FILE
            try:
                progress = json.loads(saved.read_text())
            except FileNotFoundError:
                progress = {}
            except (OSError, ValueError) as err:
                raise DataError(f"The meta-training checkpoint {checkpoint} is damaged ({saved.name}: {err}). Delete "
                                f"{Path(checkpoint).parent} to meta-train anew.") from err
            kept = (Path(checkpoint) / OBJECTIVE_JSON_FILE).is_file()  # the history, restored by the trainer
            if not kept and "history" in progress:  # a checkpoint of an older version kept it in this file
                self.objective.history, kept = list(progress["history"]), True
            if progress:
                self.carried_seconds = float(progress["seconds"])
                self.started = time.perf_counter()
            # a checkpoint of an older version that kept no history: the history covers the steps after it
            self.history_from_step = progress.get("history_from_step") if kept else self.state.global_step

    return ProgressKeepingTrainer


# --------------------------------------------------------------------------------------------------
# Meta-test: the ProtoNet classifier on (routed, merged, optionally fine-tuned) encoder weights


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    batch = encode_texts(tokenizer, texts, truncation=True, max_length=token_budget(tokenizer, max_length),
                         padding=True, return_tensors="pt")
    return {k: v.to(device) for k, v in batch.items()}


def _support_prototypes(encoder: torch.nn.Module, tokenizer: Any, task: FewShotTask, max_length: int) -> torch.Tensor:
    from ..tuners.sparse_expert import class_prototypes

    features = torch.from_numpy(
        mean_pooled_embeddings(encoder, tokenizer, task.labelled.texts, max_length=max_length, normalize=False)
    )

    return class_prototypes(features, torch.tensor(task.labelled.labels), task.num_labels)


class PrototypeClassifier(FittedClassifier):
    """A plain encoder plus the cosine ProtoNet head ``scale * cos(f(x), c_k)`` (mean-pooled features).

    ``save`` writes the encoder as a plain transformers folder (``model/``, safetensors), the
    prototypes (``head.safetensors``) and ``classifier.json``; :meth:`load` reads them back.
    """

    def __init__(self, encoder: torch.nn.Module, tokenizer: Any, prototypes: torch.Tensor, label_names: Sequence[str],
                 max_length: int, scale: float = 10.0, info: dict[str, Any] | None = None,
                 trainable_parameters: int = 0) -> None:
        self.encoder = encoder.eval()
        self.tokenizer = tokenizer
        self.prototypes = F.normalize(prototypes.float(), dim=-1)
        self.label_names = tuple(label_names)
        self.max_length = max_length
        self.scale = scale
        self.info = dict(info or {})
        self.trainable_parameters = trainable_parameters

    def to(self, device: str | torch.device) -> PrototypeClassifier:
        self.encoder.to(device)
        return self

    def predict_proba(self, texts: Sequence[str], use_cache: bool = True) -> np.ndarray:
        features = torch.from_numpy(mean_pooled_embeddings(self.encoder, self.tokenizer, texts, max_length=self.max_length))
        return torch.softmax(self.scale * features @ self.prototypes.T, dim=-1).numpy()

    def save(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(out / "model", safe_serialization=True)
        self.tokenizer.save_pretrained(out / "model")
        save_file({"prototypes": self.prototypes.contiguous()}, str(out / "head.safetensors"))
        (out / "classifier.json").write_text(json.dumps({
            "head": "cosine prototypes", "pooling": "mean", "scale": self.scale, "max_length": self.max_length,
            "label_names": list(self.label_names), **self.info,
        }, indent=2, default=str))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> PrototypeClassifier:
        """Read a folder written by :meth:`save` (offline, safetensors only)."""
        folder = Path(directory)
        config_path = folder / "classifier.json"
        if not config_path.is_file() or not (folder / "head.safetensors").is_file():
            raise FileNotFoundError(
                f"{folder} is not a saved prototype classifier: it needs classifier.json, head.safetensors and model/."
            )
        config = json.loads(config_path.read_text())
        prototypes = load_file(str(folder / "head.safetensors"))["prototypes"]
        if prototypes.shape[0] != len(config["label_names"]):
            raise ValueError(f"{folder}: head.safetensors has {prototypes.shape[0]} prototypes but "
                             f"{len(config['label_names'])} label names; the folder is corrupt.")
        return cls(load_encoder(folder / "model"), load_tokenizer(folder / "model"), prototypes, config["label_names"],
                   config["max_length"], config["scale"], info={k: config[k] for k in config if k == "routing"})


def finetune_on_support(encoder: torch.nn.Module, tokenizer: Any, task: FewShotTask, budget: Budget, mode: str,
                        seed: int, lora_r: int = 8, lora_alpha: int = 8,
                        dev_selector: DevSelector | None = None,
                        target_modules: Any = None) -> tuple[torch.nn.Module, int]:
    """Test-time fine-tuning with the ProtoNet loss (prototypes from each batch, as the authors recompute them).

    ``mode``: ``"lora"`` (PEFT LoRA on query/value, merged afterwards; ``target_modules`` as
    :func:`~hf_lowdata.methods.finetune.lora_target_modules` gives them) or ``"full"``. Steps and batch size
    follow ``budget`` (the same as the baselines'); batches are stratified and seeded. ``dev_selector``
    (see :func:`prototype_dev_selector`) keeps the step with the best dev accuracy. Returns the (plain)
    encoder and the number of trained parameters.
    """
    from ..tuners.sparse_expert import class_prototypes, cosine_logits, pooled_features

    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        targets = lora_target_modules(encoder, target_modules)
        model = get_peft_model(encoder, LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=targets))
    elif mode == "full":
        model = encoder
        model.requires_grad_(True)
    else:
        raise ValueError(FINETUNE_ERROR.format(mode=mode))
    params = [p for p in model.parameters() if p.requires_grad]
    trained = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=budget.learning_rate, weight_decay=budget.weight_decay)
    labels = np.asarray(task.labelled.labels)
    steps = budget.steps(len(labels))
    generator = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in range(task.num_labels)]
    per_class, ways = support_batch_shape(budget.batch_size, task.num_labels)
    device = next(model.parameters()).device
    backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
    model.train()
    for step in range(steps):
        lr_scale = min(1.0, (step + 1) / max(1, round(budget.warmup_ratio * steps))) * (1 - step / steps)
        for group in optimizer.param_groups:
            group["lr"] = budget.learning_rate * lr_scale
        classes = (range(task.num_labels) if ways == task.num_labels
                   else sorted(generator.choice(task.num_labels, ways, replace=False)))
        parts = [generator.choice(by_class[c], min(per_class, len(by_class[c])), replace=False) for c in classes]
        idx = np.concatenate(parts)
        batch = _encode(tokenizer, [task.labelled.texts[i] for i in idx], budget.max_length, device)
        # the step's classes numbered 0..ways-1: prototypes and logits over the classes in the batch
        y = torch.as_tensor(np.repeat(np.arange(len(parts)), [len(p) for p in parts]), device=device)
        features = pooled_features(backbone, batch)
        loss = F.cross_entropy(cosine_logits(features, class_prototypes(features, y, len(parts))), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Test-time fine-tuning loss became {loss.item()} at step {step}; lower its lr.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if dev_selector is not None and dev_selector.due(step + 1):
            dev_selector.observe(step + 1, model)
            model.train()
    model.eval()
    if dev_selector is not None:
        dev_selector.restore(model)
    if mode == "lora":
        model = model.merge_and_unload()
    model.requires_grad_(False)
    return model, trained


def source_names(sources: str | Sequence[str]) -> tuple[str, ...]:
    """The ``sources`` option (``"sst5,mr,mpqa"`` or a list) as dataset folder names."""
    return tuple(s.strip() for s in (sources.split(",") if isinstance(sources, str) else sources) if s.strip())


def support_batch_shape(batch_size: int, num_labels: int) -> tuple[int, int]:
    """Examples per class and classes per test-time step: the budget's batch size, at least 2 examples per class.

    [ours] The prototypes come from the batch they classify, so a class with one example in the batch is its own
    prototype; and a batch of every class would encode ``num_labels`` texts per step, more than the budget's batch
    size (the baselines') once there are more classes than that. So each step takes ``ways`` classes (all of them
    while ``2 * num_labels <= batch_size``) with ``batch_size // ways`` examples each: a binary task keeps 4 per
    class at batch 8; five classes take 4 of them, 2 each, per step; fifty take 4 per step.
    """
    ways = min(num_labels, max(2, batch_size // 2))
    return max(1, batch_size // ways), ways


def prototype_dev_selector(tokenizer: Any, task: FewShotTask, budget: Budget) -> DevSelector:
    """Dev-set step selection for :func:`finetune_on_support`: each scored model classifies the dev texts
    with prototypes of the support set, as the final classifier does."""
    assert task.dev is not None and task.dev.labels is not None

    def dev_logits(model: torch.nn.Module) -> np.ndarray:
        encoder = model.get_base_model() if hasattr(model, "get_base_model") else model
        prototypes = _support_prototypes(encoder, tokenizer, task, budget.max_length)
        probabilities = PrototypeClassifier(encoder, tokenizer, prototypes, task.label_names,
                                            budget.max_length).predict_proba(task.dev.texts, use_cache=False)
        return np.log(np.clip(probabilities, 1e-30, None))  # log-probabilities: logits of the same softmax

    return DevSelector(task.dev.labels, dev_logits, budget.steps(len(task.labelled)))


_NO_SOURCE_DIR = (f"meta-trains on source datasets: set {DATA_DIR_ENV} to a folder holding "
                  f"{', '.join(DEFAULT_SOURCES)} (hf-lowdata train and bench also take --config source_dir=DIR)")


class SparseExpertMethod(Method):
    """SMAT: meta-trained sparse interpolated experts, routed and merged per task (see the module docstring)."""

    name: ClassVar[str] = "sparse_expert"
    summary: ClassVar[str] = "SMAT: meta-tuned sparse experts routed per task, merged, + test-time LoRA (ProtoNet head)"
    paper: ClassVar[str] = (
        "Chen et al., Unleashing the Power of Meta-tuning for Few-shot Generalization Through Sparse "
        "Interpolated Experts, ICML 2024"
    )
    budget_name: ClassVar[str] = BUDGET_NAME
    option_names = META_TRAINING_OPTIONS | {"router_temperature", "finetune", "r", "lora_alpha"}
    #: Adapter settings of this variant (over the budget's options).
    adapter_overrides: ClassVar[dict[str, Any]] = {}
    #: Objective settings of this variant.
    objective_overrides: ClassVar[dict[str, Any]] = {}
    #: False: skip meta-training (the pretrained encoder, for the no-meta-tuning ablation).
    meta_tune: ClassVar[bool] = True

    @classmethod
    def known_options(cls) -> frozenset[str]:
        """Without meta-tuning (``sparse_expert_pretrained``) the meta-training options are not read: given for
        it alone, they are unknown settings, not silently ignored ones."""
        known = super().known_options()
        return known if cls.meta_tune else known - META_TRAINING_OPTIONS

    @classmethod
    def data_dir_datasets(cls, options: Mapping[str, Any]) -> list[str]:
        if not cls.meta_tune or options.get("source_dir"):  # no sources, or none from the benchmark's folder
            return []
        return list(source_names(options.get("sources", get_budget(BUDGET_NAME).options.get("sources", DEFAULT_SOURCES))))

    @classmethod
    def fixed_options(cls) -> Mapping[str, Any]:
        return {k: v for k, v in cls.adapter_overrides.items() if k in cls.option_names}

    @classmethod
    def missing_requirements(cls, options: Mapping[str, Any] | None = None) -> str | None:
        """Meta-training needs a source folder: ``source_dir``, the benchmark's data dir or $HF_LOWDATA_DATA_DIR."""
        if not cls.meta_tune:
            return None  # the no-meta-tuning ablation reads no source dataset
        given = {**get_budget(BUDGET_NAME).options, **(options or {})}
        if given.get("source_dir") or given.get(BENCH_DATA_DIR_OPTION) or os.environ.get(DATA_DIR_ENV):
            return None
        return _NO_SOURCE_DIR

    def option(self, ctx: RunContext, name: str, default: Any = None) -> Any:
        return ctx.option(BUDGET_NAME, name, default)

    def number(self, ctx: RunContext, name: str, default: Any, **limits: Any) -> Any:
        """:meth:`option` read by :func:`~hf_lowdata.methods.base.number_option` (a MethodConfigError naming it)."""
        return number_option(self.name, name, self.option(ctx, name, default), **{"example": default, **limits})

    def _source_dir(self, ctx: RunContext, sources: Sequence[str]) -> str:
        """``source_dir`` if given; else the benchmark's data dir when it holds the sources; else $HF_LOWDATA_DATA_DIR.

        A benchmark of the user's own datasets (``--data-dir my_data``) thus still finds the source
        datasets where the README says to put them.
        """
        given = self.option(ctx, "source_dir")
        if given:
            if not Path(given).is_dir():
                raise DataError(f"source_dir={given} is not a folder. Give the folder that holds the source datasets "
                                f"({', '.join(sources)}), one sub-folder each.")
            return str(given)
        candidates = [c for c in (ctx.options.get(BENCH_DATA_DIR_OPTION), os.environ.get(DATA_DIR_ENV)) if c]
        if not candidates:
            raise DataError(f"{self.name} {_NO_SOURCE_DIR}.")
        for folder in candidates:
            if all((Path(folder) / name).is_dir() for name in sources):
                return str(folder)
        missing = [n for n in sources if not (Path(candidates[0]) / n).is_dir()]
        raise DataError(
            f"{self.name} meta-trains on the source datasets {', '.join(sources)}, but {', '.join(missing)} "
            f"not found in {' or in '.join(candidates)}. Set {DATA_DIR_ENV} (or --config source_dir=DIR) to the folder "
            "holding them, or choose others with --config sources=a,b,c."
        )

    def source_names(self, ctx: RunContext) -> tuple[str, ...]:
        """Option ``sources``: the source dataset folders, by name (a path is refused)."""
        sources = self.option(ctx, "sources", ",".join(DEFAULT_SOURCES))
        names = source_names(sources)
        paths = [n for n in names if n in (".", "..") or any(sep in n for sep in ("/", "\\")) or Path(n).is_absolute()]
        if paths:  # (the demo refuses folder settings; a source name must not reach outside source_dir either)
            raise DataError(f"sources names dataset folders inside the source folder, but {paths[0]!r} is a path. Give "
                            "folder names, e.g. --config sources=sst5,mr,mpqa, and the folder with source_dir=.")
        return names

    def meta_settings(self, ctx: RunContext) -> dict[str, Any]:
        """The meta-training options of :class:`MetaTrainingPlan` (adapter, objective and schedule), checked."""
        from ..tuners.sparse_expert import SparseExpertConfig

        adapter = {"num_experts": self.number(ctx, "num_experts", 8, whole=True),
                   "target_sparsity": self.number(ctx, "target_sparsity", 0.9), **self.adapter_overrides}
        method_config(self.name, SparseExpertConfig, **adapter)  # its ranges, checked now (meta-training builds it)
        objective = dict(self.objective_overrides)
        if self.option(ctx, "binary_masks_from") is not None:  # (only when set: the default keeps its cache key)
            objective["binary_masks_from"] = self.number(ctx, "binary_masks_from", None, low=0, high=1, example=0.5)
        return {
            "adapter": adapter,
            "objective": objective,
            "steps": self.number(ctx, "meta_steps", 100, whole=True, low=1),
            "meta_batch": self.number(ctx, "meta_batch", 4, whole=True, low=1),
            "learning_rate": self.number(ctx, "meta_lr", 5e-4, low=0, low_open=True),
            "seed": self.number(ctx, "meta_seed", 0, whole=True, low=0, high=2**32 - 1),
            "query_per_class": self.number(ctx, "query_per_class", 8, whole=True, low=1),
        }

    def task_settings(self, ctx: RunContext) -> tuple[str, int, int, float]:
        """The per-task options: test-time ``finetune`` mode, its LoRA ``r`` and ``lora_alpha``, and the
        ``router_temperature``."""
        return (choice_option(self.name, "finetune", self.option(ctx, "finetune", "lora"), FINETUNE_MODES, "lora"),
                self.number(ctx, "r", 8, whole=True, low=1),
                self.number(ctx, "lora_alpha", 8, whole=True, low=1),
                self.number(ctx, "router_temperature", 0.5, low=0, low_open=True))

    def check_options(self, ctx: RunContext) -> None:
        """Also finds the source datasets (a missing folder fails before the benchmark's first run)."""
        super().check_options(ctx)
        self.task_settings(ctx)
        if self.meta_tune:
            self.meta_settings(ctx)
            self._source_dir(ctx, self.source_names(ctx))

    def plan(self, task: FewShotTask | None, ctx: RunContext) -> MetaTrainingPlan:
        """The meta-training plan of this run (sources minus the task's own dataset, held-out texts excluded)."""
        given = self.source_names(ctx)
        source_dir = self._source_dir(ctx, given)
        names = tuple(n for n in given if task is None or n != task.name)  # the evaluated dataset stays held out
        if not names:
            raise DataError(f"No source dataset left to meta-train on (sources={','.join(given)!r}, task "
                            f"{task and task.name!r}).")
        extra = evaluated_texts(task, ctx) if task is not None else ()
        return MetaTrainingPlan(
            model=str(ctx.model) if ctx.model is not None else None,
            source_dir=str(source_dir),
            sources=names,
            **self.meta_settings(ctx),
            exclude_texts=tuple(held_out_texts(Path(source_dir), extra)),
        )

    def fit(self, task: FewShotTask, ctx: RunContext) -> FittedClassifier:
        from peft import PeftModel

        budget = ctx.budget_for(BUDGET_NAME)
        tokenizer = ctx.cache.tokenizer(ctx.model)
        encoder = load_encoder(ctx.model).to(default_device(ctx.device))  # (training and prototypes run there)
        info: dict[str, Any] = {"method": self.name}
        # every setting read before meta-training, not half an hour later
        mode, lora_r, lora_alpha, router_temperature = self.task_settings(ctx)
        counts = task.labelled.class_counts()
        empty = [name for name in task.label_names if not counts.get(name)]
        if empty:  # (before meta-training too)
            raise DataError(f"{self.name} classifies by the mean of each class's labelled examples (prototypes), but "
                            f"{', '.join(map(repr, empty))} has none. Add labelled examples of it, or remove it from "
                            "the label names (meta.json).")
        if mode == "lora":
            lora_target_modules(encoder)  # a model type without LoRA targets fails before meta-training
        if self.meta_tune:
            adapter_dir = meta_train(self.plan(task, ctx), self.option(ctx, "cache_dir"), quiet=ctx.quiet,
                                     device=ctx.device, callbacks=[_run_callback(ctx, f"{self.name} meta-training")])
            peft_model = PeftModel.from_pretrained(encoder, adapter_dir).eval()
            batch = _encode(tokenizer, task.labelled.texts, budget.max_length, next(encoder.parameters()).device)
            weights = peft_model.base_model.route_support(
                batch, torch.tensor(task.labelled.labels), router_temperature)
            encoder = peft_model.merge_and_unload()
            info.update(routing=[round(float(w), 4) for w in weights], meta_trained_adapter=str(adapter_dir))
            meta = json.loads((adapter_dir / META_FILE).read_text())
        trained = 0
        selector = None
        if mode != "none":
            ft_budget = budget if mode == "lora" else full_finetune_budget(ctx)
            selector = prototype_dev_selector(tokenizer, task, ft_budget) if task.dev is not None else None
            encoder, trained = finetune_on_support(encoder, tokenizer, task, ft_budget, mode, ctx.seed,
                                                   lora_r, lora_alpha,
                                                   dev_selector=selector)
        info["finetune"] = mode
        prototypes = _support_prototypes(encoder, tokenizer, task, budget.max_length)
        fitted = PrototypeClassifier(encoder, tokenizer, prototypes, task.label_names, budget.max_length, info=info,
                                     trainable_parameters=trained)
        if self.meta_tune:  # shared by every task of the plan; trainable_parameters counts this task's training
            fitted.notes.update(meta_trained_parameters=meta.get("trainable_parameters"),
                                meta_trained_adapter_bytes=meta.get("adapter_bytes"))
        if selector is not None:
            fitted.notes.update(dev_accuracy=selector.best_accuracy, selected_step=selector.best_step)
        elif task.dev is not None:
            fitted.notes["dev_set"] = "not used: finetune='none' trains no step to select"
        return fitted


@register_method
class SparseExpert(SparseExpertMethod):
    name = "sparse_expert"


#: The ablations: (name, summary, adapter overrides, objective overrides, meta-tune).
VARIANTS: tuple[tuple[str, str, dict[str, Any], dict[str, Any], bool], ...] = (
    ("sparse_expert_dense", "Ablation: dense meta-tuning (one always-on mask: the PMF analogue), same head and "
     "test-time budget", {"num_experts": 1, "target_sparsity": 0.0}, {"learn_masks": False}, True),
    ("sparse_expert_m4", "Ablation: SMAT with 4 experts instead of 8", {"num_experts": 4}, {}, True),
    ("sparse_expert_tau80", "Ablation: SMAT with mask sparsity 0.8", {"target_sparsity": 0.8}, {}, True),
    ("sparse_expert_tau95", "Ablation: SMAT with mask sparsity 0.95", {"target_sparsity": 0.95}, {}, True),
    ("sparse_expert_pretrained", "Ablation: no meta-tuning (pretrained encoder), same ProtoNet head and test-time "
     "fine-tuning", {}, {}, False),
)

for _name, _summary, _adapter, _objective, _meta in VARIANTS:
    register_method(type(f"Variant_{_name}", (SparseExpertMethod,), {
        "name": _name, "summary": _summary, "adapter_overrides": _adapter, "objective_overrides": _objective,
        "meta_tune": _meta, "__doc__": _summary}))
