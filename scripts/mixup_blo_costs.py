"""Per-step cost of MixupBLO against full fine-tuning, and merged-model inference latency.

Times a few optimizer steps of each training mode on one labelled set (the benchmark's sampler and
budget), then projects the wall time of one benchmark run: ``folds x steps(split_ratio N)`` search
steps plus ``steps(N)`` phase-2 steps, against ``steps(N)`` steps of full fine-tuning. Inference is
timed on test texts, alternating the merged MixupBLO model and the base model so that machine load
hits both alike; the training modes are timed in interleaved rounds for the same reason. Usage
(about 5 minutes on 2 idle CPU cores):

    python scripts/mixup_blo_costs.py --data-dir ../shared/data --dataset sst2 --total 300 --steps 3 \
        --rounds 2 --out runs/mixup_blo_costs.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from transformers import TrainerCallback, set_seed

from hf_lowdata.bench.runner import quiet_libraries
from hf_lowdata.budgets import get_budget
from hf_lowdata.data import collator, load_data, make_few_shot_task, tokenize
from hf_lowdata.inference import predict_logits
from hf_lowdata.models import load_for_classification, load_tokenizer
from hf_lowdata.paths import atomic_write_text

#: (label, hypergradient, task weight); None is plain full fine-tuning.
MODES = [("full", None, None), ("mixup_blo", "darts", "full"), ("mixup_blo_fo", "first_order", "full"),
         ("mixup_blo_joint", "none", "full"), ("mixup_blo_lora", "darts", "lora")]


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._start)


def time_steps(mode, data, tokenizer, steps: int, frozen_mixing: bool = False) -> list[float]:
    """Seconds of each optimizer step but the first (warm-up)."""
    from dataclasses import replace

    from peft import TaskType, get_peft_model

    from hf_lowdata.training import LowDataTrainer, TrainingObjective, few_shot_training_args
    from hf_lowdata.tuners.mixup_blo import MixupBLOConfig

    label, hypergradient, task_weight = mode
    budget = replace(get_budget("full" if label == "full" else label), min_steps=steps + 1, max_steps=steps + 1)
    set_seed(0)
    model = load_for_classification(None, 2, seed=0)
    objective = TrainingObjective()
    if hypergradient is not None:
        model = get_peft_model(model, MixupBLOConfig(task_type=TaskType.SEQ_CLS, hypergradient=hypergradient,
                                                     task_weight=task_weight))
        objective = None  # the trainer picks MixupBLO's bi-level objective
        if frozen_mixing:  # a phase-2 step: plain fine-tuning through the mixed layers
            for name, p in model.named_parameters():
                if "_mix_" in name:
                    p.requires_grad_(False)
            objective = TrainingObjective()
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = few_shot_training_args(out, budget, len(data), seed=0, use_cpu=True,
                                      max_grad_norm=5.0 if hypergradient and not frozen_mixing else 1.0)
        LowDataTrainer(model=model, args=args, train_dataset=data, data_collator=collator(tokenizer),
                       processing_class=tokenizer, objective=objective, callbacks=[timer]).train()
    return timer.seconds[1:]


def inference_latency(texts, tokenizer, repeats: int) -> dict[str, float]:
    """Seconds per 1,000 texts of the merged MixupBLO model and the base model, interleaved."""
    from peft import TaskType, get_peft_model

    from hf_lowdata.tuners.mixup_blo import MixupBLOConfig

    base = load_for_classification(None, 2, seed=0).eval()
    merged = get_peft_model(load_for_classification(None, 2, seed=0),
                            MixupBLOConfig(task_type=TaskType.SEQ_CLS)).merge_and_unload().eval()
    times: dict[str, list[float]] = {"base": [], "merged": []}
    for _ in range(repeats):
        for name, model in (("base", base), ("merged", merged)):
            start = time.perf_counter()
            predict_logits(model, tokenizer, texts)
            times[name].append(1000 * (time.perf_counter() - start) / len(texts))
    return {name: float(np.median(values)) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--dataset", default="sst2")
    parser.add_argument("--total", type=int, default=300)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode and round (after a warm-up step)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all modes (interleaved timing)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--split-ratio", type=float, default=0.8)
    parser.add_argument("--inference-texts", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    quiet_libraries()
    splits = load_data(args.data_dir / args.dataset, empty_text="drop")
    task = make_few_shot_task(splits, seed=0, n=args.total, warn_on_overlap=False)
    tokenizer = load_tokenizer(None)
    data = tokenize(task.labelled, tokenizer)
    runs = [(mode[0], mode, False) for mode in MODES] + [("phase2_full", MODES[1], True), ("phase2_lora", MODES[4], True)]
    timed: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    for _ in range(args.rounds):  # interleaved, so that a change in machine load hits every mode alike
        for label, mode, frozen in runs:
            timed[label].extend(time_steps(mode, data, tokenizer, args.steps, frozen_mixing=frozen))
    step = {label: float(np.median(values)) for label, values in timed.items()}
    n, search_n = args.total, round(args.split_ratio * args.total)
    full_run = get_budget("full").steps(n) * step["full"]
    projected = {}
    for label, hypergradient, task_weight in MODES[1:]:
        budget = get_budget(label)
        search_n_mode = n if hypergradient == "none" else search_n
        phase2 = step["phase2_lora" if task_weight == "lora" else "phase2_full"]
        seconds = args.folds * budget.steps(search_n_mode) * step[label] + budget.steps(n) * phase2
        projected[label] = {"seconds": round(seconds, 1), "x_full": round(seconds / full_run, 2)}
    projected["mixup_blo_noavg"] = projected["mixup_blo"]
    # one fold, first-order: the search of mixup_blo_fo, once
    fast = get_budget("mixup_blo_fast")
    seconds = fast.steps(search_n) * step["mixup_blo_fo"] + fast.steps(n) * step["phase2_full"]
    projected["mixup_blo_fast"] = {"seconds": round(seconds, 1), "x_full": round(seconds / full_run, 2)}
    latency = inference_latency(list(splits.test.texts[: args.inference_texts]), tokenizer, args.repeats)
    result = {"dataset": args.dataset, "total": n, "folds": args.folds, "step_seconds": step,
              "step_seconds_all": timed,
              "full_run_seconds": round(full_run, 1), "projected_run": projected,
              "inference_seconds_per_1k": latency}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print("\n| mode | step s | x full step | projected run s | x full run |\n|---|---|---|---|---|")
    print(f"| full | {step['full']:.2f} | 1.00 | {full_run:.0f} | 1.00 |")
    for label in ("mixup_blo", "mixup_blo_lora", "mixup_blo_fo", "mixup_blo_joint", "mixup_blo_fast"):
        p, key = projected[label], "mixup_blo_fo" if label == "mixup_blo_fast" else label
        print(f"| {label} | {step[key]:.2f} | {step[key] / step['full']:.2f} | {p['seconds']:.0f} | {p['x_full']:.1f} |")


if __name__ == "__main__":
    main()
