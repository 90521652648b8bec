"""TwinTurbo cost figures: caching, training from the cache, and the projector's inference overhead.

``python -m hf_lowdata.bench.twin_turbo_timing --data-dir ../shared/data --dataset sst2 --k 16
--unlabelled 2000 --out runs/twin_turbo_timing.json``

1. caching: seconds to compute the token states of the labelled set + unlabelled pool, next to one
   plain backbone forward pass over the same texts (the claim: caching costs one forward pass);
2. training: seconds of ``twin_turbo`` training once the states are cached (the 60 s target);
3. inference: backbone alone vs backbone + projector + head on the test texts, same batches
   (the claim: projector overhead <= 15% of the backbone's latency).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import load_data, make_few_shot_task
from ..features import FeatureCache, TokenStateDataset, model_fingerprint, text_token_states
from ..inference import mean_pooled_embeddings, predict_logits
from ..methods import RunContext
from ..methods.twin_turbo import BUDGET_NAME, build_config, train_projector
from ..models import load_encoder, load_for_classification, load_tokenizer, resolve_model_path


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(data_dir: Path, dataset: str, k: int, unlabelled: int, seed: int, model: str | None,
            repeats: int = 3) -> dict:
    from peft import TaskType, get_peft_model

    splits = load_data(data_dir / dataset, empty_text="drop")
    task = make_few_shot_task(splits, seed=seed, k=k, unlabelled=unlabelled)
    assert task.unlabelled is not None and splits.test is not None
    tokenizer, backbone = load_tokenizer(model), load_encoder(model)
    ctx = RunContext(model=model, seed=seed, work_dir=Path("/tmp/hf_lowdata_timing"), quiet=True)
    budget = ctx.budget_for(BUDGET_NAME)
    texts = [*task.labelled.texts, *task.unlabelled.texts]
    cache = FeatureCache()
    key = model_fingerprint(resolve_model_path(model))
    forward_s = min(_seconds(lambda: mean_pooled_embeddings(backbone, tokenizer, texts, max_length=budget.max_length))
                    for _ in range(repeats))
    cache_s = _seconds(lambda: text_token_states(cache, backbone, tokenizer, texts, budget.max_length, key))
    labelled = TokenStateDataset(text_token_states(cache, backbone, tokenizer, task.labelled.texts,
                                                   budget.max_length, key), task.labelled.labels)
    pool = TokenStateDataset(text_token_states(cache, backbone, tokenizer, task.unlabelled.texts,
                                               budget.max_length, key))
    config = build_config(ctx, {}, task_type=TaskType.SEQ_CLS)
    peft_model = get_peft_model(load_for_classification(model, task.num_labels, seed=seed), config)
    trainer_box = {}
    train_s = _seconds(lambda: trainer_box.update(
        t=train_projector(peft_model, labelled, pool, budget, ctx, "timing", config)))
    test = list(splits.test.texts)
    trained = trainer_box["t"][0].model.eval()
    backbone_s = full_s = float("inf")
    for _ in range(repeats):  # interleaved, best of ``repeats``: robust to other load on the machine
        backbone_s = min(backbone_s, _seconds(lambda: mean_pooled_embeddings(
            backbone, tokenizer, test, max_length=budget.max_length, normalize=False)))
        full_s = min(full_s, _seconds(lambda: predict_logits(trained, tokenizer, test, max_length=budget.max_length)))
    return {
        "dataset": dataset, "k": k, "unlabelled": unlabelled, "seed": seed, "threads": torch.get_num_threads(),
        "texts_cached": len(texts), "cache_seconds": round(cache_s, 2),
        "one_forward_pass_seconds": round(forward_s, 2), "train_seconds_from_cache": round(train_s, 2),
        "train_steps": trainer_box["t"][0].state.global_step, "test_texts": len(test),
        "inference_backbone_seconds": round(backbone_s, 2), "inference_with_projector_seconds": round(full_s, 2),
        "projector_overhead_percent": round(100 * (full_s - backbone_s) / backbone_s, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hf_lowdata.bench.twin_turbo_timing", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--dataset", default="sst2")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--unlabelled", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None)
    p.add_argument("--repeats", type=int, default=3, help="forward-pass and inference timings: best of N")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    result = measure(args.data_dir, args.dataset, args.k, args.unlabelled, args.seed, args.model, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
