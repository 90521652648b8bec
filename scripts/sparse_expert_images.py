"""SMAT's image protocol: meta-train on Fashion-MNIST classes 0-5, meta-test on classes 6-9.

EfficientNet-Lite0 (``hf_lowdata.vision``) is meta-trained with SparseExpert on N-way k-shot
episodes drawn from the training images of classes 0-5; each meta-test task is 4-way (classes 6-9,
relabelled 0-3): k support images per class from the training split, scored on all test images of
those classes. Compared, each with the same cosine ProtoNet head and no test-time fine-tuning
(``--finetune full`` adds it): ``smat`` (routed sparse experts), ``dense`` (dense meta-tuning, the
PMF analogue) and ``pretrained`` (no meta-tuning). The squeeze-excite convolutions (neutralised in
the Lite0 port) are not adapted. Results are appended to ``OUT/results.jsonl`` (a rerun, e.g. after a
kill, skips the (variant, k, seed) runs already there under the same evaluation settings); meta-trained
adapters are kept in ``OUT/<variant>/`` with their settings in ``meta_training.json`` and reused only
under the same settings (another ``--meta-*`` / ``--size`` / ``--query-per-class`` is refused: choose
another ``--out``).

    python scripts/sparse_expert_images.py --out runs/smat_images --shots 1,5 --seeds 0-4 \
        --variants smat,dense,pretrained --meta-steps 100 --size 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel, get_peft_model
from transformers import set_seed

from hf_lowdata import SparseExpertConfig
from hf_lowdata.bench.results import append_record, read_records, repair_tail
from hf_lowdata.budgets import Budget
from hf_lowdata.cli import _int_list, _name_list
from hf_lowdata.paths import atomic_write_text
from hf_lowdata.training import LowDataTrainer, few_shot_training_args, last_complete_checkpoint
from hf_lowdata.training.episodes import EpisodeDataset
from hf_lowdata.tuners.sparse_expert import (
    SparseExpertObjective,
    class_prototypes,
    cosine_logits,
    pooled_features,
)
from hf_lowdata.vision import (
    FASHION_MNIST_LABELS,
    ImageSet,
    images_to_pixel_values,
    load_efficientnet_lite0,
    load_fashion_mnist,
    make_image_few_shot_task,
)

META_CLASSES, TEST_CLASSES = range(0, 6), range(6, 10)
TARGETS = r".*encoder\.(blocks\.\d+\.(expansion\.expand_conv|depthwise_conv\.depthwise_conv|projection\.project_conv)|top_conv)"
VARIANTS = {
    "smat": ({}, {}),
    "dense": ({"num_experts": 1, "target_sparsity": 0.0}, {"learn_masks": False}),
}


def class_subset(images: ImageSet, classes: range) -> ImageSet:
    """The images of ``classes``, relabelled 0..len(classes)-1."""
    keep = np.flatnonzero(np.isin(images.labels, list(classes)))
    return ImageSet(images.images[keep], images.labels[keep] - classes.start,
                    tuple(FASHION_MNIST_LABELS[c] for c in classes), f"{images.source} classes {list(classes)}")


class ImageSource:
    """An :class:`ImageSet` as an episode source (pixel values at ``size`` pixels, on demand)."""

    def __init__(self, images: ImageSet, size: int, name: str) -> None:
        self.images, self.size, self.name = images, size, name
        self.labels = images.labels.tolist()
        self.num_labels = images.num_labels

    def encode(self, indices) -> dict[str, torch.Tensor]:
        return {"pixel_values": images_to_pixel_values(self.images.images[list(indices)], self.size)}


#: Recorded in each meta-training's folder (and its checkpoint folder): what the adapter was trained under.
SETTINGS_FILE = "settings.json"
EPISODES = {"way": (2, 5), "shot": (1, 5), "seed": 0}


def meta_settings(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Everything that determines ``variant``'s meta-trained adapter (JSON-able, as recorded)."""
    adapter, objective = VARIANTS[variant]
    return json.loads(json.dumps({
        "variant": variant, "adapter": adapter, "objective": objective, "targets": TARGETS, "size": args.size,
        "meta_steps": args.meta_steps, "meta_batch": args.meta_batch, "meta_lr": args.meta_lr,
        "query_per_class": args.query_per_class, **EPISODES}))


def _refuse_other_settings(folder: Path, recorded: dict[str, Any] | None, wanted: dict[str, Any]) -> None:
    if recorded == wanted:
        return
    if recorded is None:
        what = "records no settings (an older run of this script)"
    else:
        what = "was meta-trained with " + ", ".join(f"{k}={recorded.get(k)!r}" for k in wanted
                                                      if recorded.get(k) != wanted[k])
    raise SystemExit(
        f"{folder} {what}; this run asks for " + ", ".join(f"{k}={wanted[k]!r}" for k in wanted
                                                           if recorded is None or recorded.get(k) != wanted[k])
        + f". Give another --out for these settings, or delete {folder} to meta-train it anew under them."
    )


def meta_train(variant: str, args: argparse.Namespace, train: ImageSet) -> Path:
    """``OUT/<variant>``: the adapter meta-trained under this run's settings (trained now if missing). A folder
    or checkpoint folder left by other settings is refused, never reused or resumed."""
    out = args.out / variant
    settings = meta_settings(variant, args)
    if (out / "meta_training.json").is_file():
        _refuse_other_settings(out, json.loads((out / "meta_training.json").read_text()).get("settings"), settings)
        return out
    work = args.out / f"{variant}.work"
    if work.is_dir():
        recorded = json.loads((work / SETTINGS_FILE).read_text()) if (work / SETTINGS_FILE).is_file() else None
        _refuse_other_settings(work, recorded, settings)
    else:
        work.mkdir(parents=True)
        atomic_write_text(work / SETTINGS_FILE, json.dumps(settings, indent=1))
    adapter, objective = VARIANTS[variant]
    source = ImageSource(class_subset(train, META_CLASSES), args.size, "fashion-mnist 0-5")
    episodes = EpisodeDataset([source], args.meta_steps * args.meta_batch, **EPISODES,
                              query_per_class=args.query_per_class)
    set_seed(EPISODES["seed"])
    model = get_peft_model(load_efficientnet_lite0().train(), SparseExpertConfig(target_modules=TARGETS, **adapter))
    budget = Budget(learning_rate=args.meta_lr, epochs=1, min_steps=args.meta_steps, max_steps=args.meta_steps,
                    batch_size=1, weight_decay=0.0, warmup_ratio=0.05)
    targs = few_shot_training_args(str(work), budget, 1, seed=EPISODES["seed"], gradient_accumulation_steps=args.meta_batch,
                                   lr_scheduler_type="cosine", save_strategy="steps",
                                   save_steps=max(1, args.meta_steps // 10), save_total_limit=1, use_cpu=True)
    trainer = LowDataTrainer(model=model, args=targs, train_dataset=episodes,
                             objective=SparseExpertObjective(**objective))
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last_complete_checkpoint(work))
    trainer.model.base_model.binarize_masks()
    tmp = args.out / f"{variant}.tmp"  # written completely, then renamed: a kill leaves no half adapter
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.model.save_pretrained(tmp)
    atomic_write_text(tmp / "meta_training.json", json.dumps({
        "settings": settings, "seconds": round(time.perf_counter() - started, 1),
        "mask_sparsity": [float(s) for s in trainer.model.base_model.mask_sparsity()],
        "history": trainer.objective.history}, indent=1))
    os.replace(tmp, out)
    shutil.rmtree(work, ignore_errors=True)
    return out


@torch.no_grad()
def features(model: torch.nn.Module, images: np.ndarray, size: int, batch: int = 256) -> torch.Tensor:
    backbone = model.base_model if hasattr(model, "base_model") else model
    return torch.cat([pooled_features(backbone, {"pixel_values": images_to_pixel_values(images[i:i + batch], size)})
                      for i in range(0, len(images), batch)])


def evaluate(variant: str, adapter: Path | None, task, args: argparse.Namespace) -> dict:
    model = load_efficientnet_lite0()
    routing = None
    support = torch.as_tensor(task.labelled.labels)
    if adapter is not None:
        peft_model = PeftModel.from_pretrained(model, adapter).eval()
        pixels = images_to_pixel_values(task.labelled.images, args.size)
        routing = peft_model.base_model.route_support({"pixel_values": pixels}, support).tolist()
        model = peft_model.merge_and_unload()
    if args.finetune == "full":
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.finetune_lr)
        pixels = images_to_pixel_values(task.labelled.images, args.size)
        for _ in range(args.finetune_steps):
            with torch.enable_grad():
                f = pooled_features(model.base_model, {"pixel_values": pixels})
                loss = torch.nn.functional.cross_entropy(cosine_logits(f, class_prototypes(f, support, 4)), support)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
    prototypes = class_prototypes(features(model, task.labelled.images, args.size), support, 4)
    predictions = cosine_logits(features(model, task.test.images, args.size), prototypes).argmax(-1).numpy()
    return {"variant": variant, "k": task.k, "seed": task.seed, "accuracy": float((predictions == task.test.labels).mean()),
            "routing": routing, **evaluation_settings(args)}


def evaluation_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings besides the adapter that a result depends on (recorded with it)."""
    settings: dict[str, Any] = {"finetune": args.finetune, "size": args.size}
    if args.finetune != "none":
        settings.update(finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr)
    return settings


def result_key(record: dict[str, Any]) -> tuple:
    """A result's identity: variant, k, seed and the evaluation settings (what a rerun must not repeat)."""
    return (record.get("variant"), record.get("k"), record.get("seed"), record.get("finetune"), record.get("size"),
            record.get("finetune_steps"), record.get("finetune_lr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shots", type=_int_list, default=[1, 5])
    parser.add_argument("--seeds", type=_int_list, default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", type=_name_list, default=["smat", "dense", "pretrained"])
    parser.add_argument("--size", type=int, default=64, help="image size (a multiple of 32)")
    parser.add_argument("--meta-steps", type=int, default=100)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--meta-lr", type=float, default=5e-4)
    parser.add_argument("--query-per-class", type=int, default=8)
    parser.add_argument("--finetune", choices=["none", "full"], default="none")
    parser.add_argument("--finetune-steps", type=int, default=20)
    parser.add_argument("--finetune-lr", type=float, default=1e-4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    held_out_train, held_out_test = class_subset(train, TEST_CLASSES), class_subset(test, TEST_CLASSES)
    results = args.out / "results.jsonl"
    done = {result_key(r) for r in read_records(results)}  # a cut-off last line (a kill mid-append) is no result
    repair_tail(results)
    for variant in args.variants:
        todo = [(k, seed) for k in args.shots for seed in args.seeds
                if result_key({"variant": variant, "k": k, "seed": seed, **evaluation_settings(args)}) not in done]
        if not todo:
            print(f"{variant}: every run is already in {results}")
            continue
        adapter = None if variant == "pretrained" else meta_train(variant, args, train)
        for k, seed in todo:
            task = make_image_few_shot_task(held_out_train, held_out_test, k=k, seed=seed, name="fashion-mnist 6-9")
            record = evaluate(variant, adapter, task, args)
            append_record(results, record)
            print(json.dumps(record))


if __name__ == "__main__":
    main()
