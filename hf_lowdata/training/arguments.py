"""``TrainingArguments`` for few-shot runs, derived from a :class:`~hf_lowdata.budgets.Budget`."""

from __future__ import annotations

from typing import Any

from transformers import TrainingArguments

from ..budgets import Budget


def few_shot_training_args(
    output_dir: str, budget: Budget, num_examples: int, seed: int = 0, **overrides: Any
) -> TrainingArguments:
    """Arguments for ``budget.steps(num_examples)`` optimizer steps, no checkpoints, no reporting.

    ``label_names=["labels"]`` and ``remove_unused_columns=False`` make PEFT models and extra inputs
    work; anything can be overridden, as a user of ``TrainingArguments`` would expect: ``save_steps=N`` or
    ``eval_steps=N`` alone switch their strategy to ``"steps"``, ``num_train_epochs=E`` alone trains E epochs
    instead of the budget's step count, and the logging interval follows the step count in force.
    """
    kwargs: dict[str, Any] = dict(
        output_dir=output_dir,
        max_steps=budget.steps(num_examples),
        per_device_train_batch_size=budget.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=budget.learning_rate,
        weight_decay=budget.weight_decay,
        warmup_steps=budget.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers 5
        lr_scheduler_type="linear",
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="steps",
        logging_steps=max(1, budget.steps(num_examples) // 5),
        report_to="none",
        disable_tqdm=True,
        label_names=["labels"],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=None,
    )
    kwargs.update(overrides)
    for interval, strategy in (("save_steps", "save_strategy"), ("eval_steps", "eval_strategy")):
        if interval in overrides and strategy not in overrides:
            kwargs[strategy] = "steps"
    if "num_train_epochs" in overrides and "max_steps" not in overrides:
        kwargs["max_steps"] = -1  # (TrainingArguments' max_steps overrides num_train_epochs)
    if "logging_steps" not in overrides and "max_steps" in overrides and kwargs["max_steps"] > 0:
        kwargs["logging_steps"] = max(1, kwargs["max_steps"] // 5)
    if kwargs.get("use_cpu") is None:
        kwargs.pop("use_cpu")
    return TrainingArguments(**kwargs)
