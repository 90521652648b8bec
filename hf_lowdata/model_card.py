"""Model cards (``README.md``) for everything ``hf-lowdata train`` and the demo save.

A card says what the adapter is (base model, method and its paper, the configuration), what it
learned from (sizes and labels of the training data), how well it did (evaluation figures, when
there was an evaluation set), and how to load it: ``import hf_lowdata`` first, because PEFT only
knows hf_lowdata's adapter types after that import. The YAML front matter carries the Hub metadata
(``library_name: peft``, ``base_model``, tags) and an ``hf_lowdata`` block with the label names and
``max_length``, which :func:`hf_lowdata.workflow.load_classifier` reads back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .models import model_id, packaged_hub_id

if TYPE_CHECKING:
    from .budgets import Budget
    from .workflow import Evaluation, TrainResult

#: Adapter-config fields worth showing; the rest are PEFT defaults.
_ADAPTER_FIELDS_SKIPPED = {"base_model_name_or_path", "revision", "peft_version", "auto_mapping", "inference_mode",
                           "task_type", "peft_type"}
#: Budget fields the card shows, with their labels.
_BUDGET_ROWS = (("batch_size", "batch size"), ("learning_rate", "learning rate"), ("weight_decay", "weight decay"),
                ("warmup_ratio", "warm-up ratio"), ("max_length", "max length (tokens)"))
_LIBRARY = {"peft": "peft", "full": "transformers", "setfit": "setfit", "probe": "hf_lowdata", "prototype": "hf_lowdata"}


def hub_cache_repo_id(path: str | os.PathLike | None) -> str | None:
    """The Hub id of a model folder in the Hugging Face cache (``.../models--org--name/snapshots/REVISION``,
    where an ``org/name`` id resolves to); else ``None``. Hub ids hold no ``--``, so the name splits unambiguously."""
    if path is None:
        return None
    folder = Path(path)
    parts = folder.parent.parent.name.split("--")
    if folder.parent.name != "snapshots" or parts[0] != "models" or len(parts) not in (2, 3) or not all(parts):
        return None
    return "/".join(parts[1:])


def hub_base_model(base_model: str | os.PathLike | None) -> str | None:
    """The Hub id of a base model when it has one (packaged models, ``org/name`` ids, Hugging Face cache
    folders); else ``None``."""
    # a local install or cache path is no use to someone reading the card
    packaged = packaged_hub_id(base_model) or hub_cache_repo_id(base_model)
    if packaged:
        return packaged
    text = str(base_model)
    if text.count("/") == 1 and not Path(text).exists() and not text.startswith((".", "/", "~")):
        return text
    return None


def build_model_card(
    *,
    method: str,
    kind: str,
    base_model: str | os.PathLike | None,
    label_names: Sequence[str],
    budget: Budget | None = None,
    options: Mapping[str, Any] | None = None,
    steps: int | None = None,
    data_summary: Mapping[str, Any] | None = None,
    evaluation: Evaluation | None = None,
    trainable_parameters: int | None = None,
    adapter_bytes: int | None = None,
    train_seconds: float | None = None,
    adapter_config: Mapping[str, Any] | None = None,
    resumed_from: str | None = None,
    earlier_seconds: float | None = 0.0,
    budget_fields: Collection[str] | None = None,
) -> str:
    """The card's Markdown text, front matter included.

    ``budget_fields``: the budget fields the method trains with (default: every one); the card shows only
    those, so a setting the method never read is not shown as if it had been used.

    ``train_seconds`` of a run resumed from checkpoint ``resumed_from`` include ``earlier_seconds``, the
    earlier sessions' time up to that checkpoint (``None``: not recorded, so ``train_seconds`` are this
    session's alone, and the card says so).
    """
    from huggingface_hub import ModelCardData

    from .methods import METHODS

    method_cls = METHODS.get(method)
    summary = getattr(method_cls, "summary", "") or method
    paper = getattr(method_cls, "paper", "") or ""
    hub_id = hub_base_model(base_model)
    base_name = model_id(base_model)
    base_ref = hub_id or str(base_model if base_model is not None else base_name)
    max_length = budget.max_length if budget is not None else 128
    tags = ["hf_lowdata", method, "text-classification", "few-shot"]
    if kind == "peft":
        tags.append("peft")
        if hub_id:
            tags.append(f"base_model:adapter:{hub_id}")
    block: dict[str, Any] = {"method": method, "label_names": list(label_names), "max_length": max_length,
                             "base_model": base_name}
    if data_summary and data_summary.get("data_fingerprint"):  # train --resume on the finished folder checks it
        block["data_fingerprint"] = data_summary["data_fingerprint"]
    pairs = bool(data_summary and data_summary.get("text_pairs"))
    if pairs:  # hf-lowdata predict asks for pairs
        block["text_pairs"] = True
    if evaluation is not None:
        block["evaluation"] = {"accuracy": round(evaluation.accuracy, 4), "macro_f1": round(evaluation.macro_f1, 4),
                               "examples": evaluation.examples}
    card_data = ModelCardData(
        library_name=_LIBRARY.get(kind, "hf_lowdata"),
        base_model=hub_id,
        pipeline_tag="text-classification",
        tags=tags,
        hf_lowdata=block,
    )
    title = f"{method} {'adapter' if kind == 'peft' else 'classifier'} for {base_name}"
    parts = [f"---\n{card_data.to_yaml()}\n---\n", f"# {title}\n",
             f"Trained with [hf_lowdata](https://github.com/hf-lowdata/hf_lowdata) method `{method}`: {summary}."]
    if paper:
        parts.append(f"\n**Paper:** {paper}")
    parts.append(f"\n**Base model:** `{base_ref}`" + (f" ({base_name})" if hub_id and hub_id != base_name else ""))
    parts.append(f"\n**Labels ({len(label_names)}):** " + ", ".join(f"`{n}`" for n in label_names))
    parts.append(_data_section(data_summary))
    parts.append(_config_section(budget, options, steps, adapter_config, trainable_parameters, adapter_bytes,
                                 _training_time(train_seconds, resumed_from, earlier_seconds), budget_fields))
    parts.append(_evaluation_section(evaluation))
    parts.append(_usage_section(kind, base_ref, label_names, pairs))
    return "\n".join(p for p in parts if p) + "\n"


def _cell(value: Any) -> str:
    """``value`` as one Markdown table cell: GitHub splits a row at every unescaped ``|``, even inside
    backticks (a ``target_modules`` regex such as ``.*(query|value)``), and ends it at a line break."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {_cell(k)} | {_cell(v)} |" for k, v in rows)


def _training_time(seconds: float | None, resumed_from: str | None, earlier: float | None) -> str | None:
    """The card's training time: for a resumed run the total over its sessions, or this session's, labelled."""
    if seconds is None:
        return None
    if resumed_from is None:
        return f"{seconds:.1f} s"
    checkpoint = Path(resumed_from).name
    if earlier is None:
        return (f"{seconds:.1f} s in this session, resumed from {checkpoint} (the earlier sessions' time "
                "was not recorded)")
    return (f"{seconds:.1f} s in total: {earlier:.1f} s up to {checkpoint}, {seconds - earlier:.1f} s after "
            "resuming from it")


def _data_section(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return ""
    per_class = ", ".join(f"{name}: {count}" for name, count in summary.get("examples_per_class", {}).items())
    unlabelled: Any = summary.get("unlabelled_examples", 0)
    if summary.get("unlabelled_not_used"):  # given, but the method trains on labelled examples only
        unlabelled = f"0 ({summary['unlabelled_not_used']} given, not used by this method)"
    rows = [("labelled examples", summary.get("labelled_examples")), ("per class", per_class),
            ("unlabelled examples", unlabelled)]
    if summary.get("text_pairs"):
        rows.insert(0, ("examples", "pairs of texts (text, text_pair), read as the model's two segments"))
    if summary.get("evaluation_examples"):
        rows.append(("evaluation examples", f"{summary['evaluation_examples']} ({summary.get('evaluation_source')})"))
    if summary.get("dev_examples"):
        rows.append(("dev examples (model selection)", f"{summary['dev_examples']} ({summary.get('dev_source')}): "
                     + (describe_model_selection(summary.get("model_selection", {})) or "")))
    return "\n## Training data\n\n" + _table(rows)


def describe_model_selection(selection: Mapping[str, Any]) -> str | None:
    """What a dev set chose, in words (from a fit's notes: ``selected_step`` or ``C``, ``dev_accuracy``,
    or ``dev_set`` saying why none was chosen); ``None`` when there was no dev set."""
    score = f" ({100 * selection['dev_accuracy']:.1f}% dev accuracy)" if "dev_accuracy" in selection else ""
    if "selected_step" in selection:
        return f"kept step {selection['selected_step']}, the best on the dev set{score}"
    if "C" in selection:
        return f"chose C = {selection['C']:g} on the dev set{score}"
    return f"dev set {selection['dev_set']}" if "dev_set" in selection else None


def _config_section(budget, options, steps, adapter_config, trainable_parameters, adapter_bytes,
                    training_time: str | None, budget_fields: Collection[str] | None = None) -> str:
    rows: list[tuple[str, Any]] = []
    if budget is not None:
        shown = set(budget_fields) if budget_fields is not None else None
        if steps is not None and (shown is None or "max_steps" in shown):
            rows.append(("optimizer steps", steps))
        rows += [(label, getattr(budget, name)) for name, label in _BUDGET_ROWS
                 if shown is None or name in shown]
    merged = {**(budget.options if budget is not None else {}), **(options or {})}
    rows += [(f"option `{k}`", f"`{v}`") for k, v in sorted(merged.items())]
    if trainable_parameters is not None:
        rows.append(("trainable parameters", f"{trainable_parameters:,}"))
    if adapter_bytes is not None:
        rows.append(("saved size", f"{adapter_bytes / 1024:,.1f} KiB"))
    if training_time is not None:
        rows.append(("training time", training_time))
    text = "\n## Configuration\n\n" + _table(rows) if rows else ""
    if adapter_config:
        text += "\n\nAdapter config (`adapter_config.json`; fields left at PEFT's defaults omitted):\n\n```json\n"
        text += json.dumps(_non_default_fields(adapter_config), indent=2, sort_keys=True, default=str) + "\n```"
    return text


def _non_default_fields(adapter_config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an adapter config that differ from its config class's defaults, plus its type."""
    defaults: dict[str, Any] = {}
    try:
        from peft import PeftConfig
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[PeftConfig.from_peft_type(**adapter_config).peft_type]
        defaults = config_cls().to_dict()
    except Exception:  # noqa: BLE001 - unknown or unregistered type: show every non-empty field
        pass
    shown = {"peft_type": adapter_config.get("peft_type")}
    for key, value in adapter_config.items():
        if key in _ADAPTER_FIELDS_SKIPPED or value in (None, {}, []):
            continue
        default = defaults.get(key, object())
        same = value == default or (isinstance(value, list) and isinstance(default, list)
                                    and set(map(str, value)) == set(map(str, default)))
        if not same:
            shown[key] = value
    return shown


def _evaluation_section(evaluation: Evaluation | None) -> str:
    if evaluation is None:
        return "\n## Evaluation\n\nNo evaluation set was given when this was trained."
    lo, hi = evaluation.accuracy_ci
    flo, fhi = evaluation.macro_f1_ci
    rows = [("accuracy", f"{evaluation.accuracy:.4f} (95% CI {lo:.3f}-{hi:.3f})"),
            ("macro-F1", f"{evaluation.macro_f1:.4f} (95% CI {flo:.3f}-{fhi:.3f})"),
            ("examples", f"{evaluation.examples} ({Path(evaluation.source).name})")]
    return ("\n## Evaluation\n\n" + _table(rows) + "\n\nIntervals: 95% percentile bootstrap over the evaluation "
            "examples. Figures on a few dozen examples move a lot between draws; compare methods on the same set.")


def _usage_section(kind: str, base_ref: str, label_names: Sequence[str], pairs: bool = False) -> str:
    # Python's own spelling: json.dumps's ASCII escapes write a character outside the basic plane (an emoji) as a
    # surrogate pair, which a Python string literal reads as two lone surrogates, not the label name
    labels = repr([str(n) for n in label_names])
    texts = '["a first text"], ["a second text"]' if pairs else '["an example sentence"]'
    cli = ('\nOr from the command line (any kind of hf_lowdata output):\n\n```bash\n'
           'hf-lowdata predict path/to/this/folder '
           + ('--text "a first text" --text-pair "a second text"' if pairs else '--text "an example sentence"')
           + '\n```' + ("\n\nThis model classifies pairs of texts: give both, as the tokenizer's two segments." if pairs
                        else ""))
    if kind == "peft":
        code = f"""import hf_lowdata  # must come before PeftModel.from_pretrained: it registers hf_lowdata's PEFT methods
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

labels = {labels}
base = AutoModelForSequenceClassification.from_pretrained(
    "{base_ref}", num_labels=len(labels),
    id2label=dict(enumerate(labels)), label2id={{name: i for i, name in enumerate(labels)}})
model = PeftModel.from_pretrained(base, "path/or/hub-id/of/this/adapter").eval()
tokenizer = AutoTokenizer.from_pretrained("{base_ref}")
inputs = tokenizer({texts}, return_tensors="pt", padding=True, truncation=True)
print(labels[model(**inputs).logits.argmax(-1).item()])"""
        note = ("This adapter's type comes from hf_lowdata, not from PEFT: install it (`pip install hf-lowdata`). "
                "`import hf_lowdata` must come before `PeftModel.from_pretrained` (and before "
                "`AutoPeftModelForSequenceClassification.from_pretrained` or transformers' `load_adapter`): "
                "it registers hf_lowdata's adapter types with PEFT; without it PEFT raises `KeyError` for them.")
    elif kind == "full":
        call = '{"text": "a first text", "text_pair": "a second text"}' if pairs else '"an example sentence"'
        code = f"""from transformers import pipeline

classifier = pipeline("text-classification", model="path/or/hub-id/of/this/folder")
print(classifier({call}))"""
        note = "A complete fine-tuned model (weights, config and tokenizer); it loads with transformers alone."
    else:
        examples = '[("a first text", "a second text")]' if pairs else '["an example sentence"]'
        code = f"""import hf_lowdata
from hf_lowdata.workflow import load_classifier

classifier = load_classifier("path/to/this/folder")
print(classifier.predict_proba({examples}))"""
        note = f"Saved as safetensors arrays plus a JSON config; `{kind}` outputs load with hf_lowdata."
    return f"\n## Usage\n\n{note}\n\n```python\n{code}\n```\n{cli}"


def write_model_card(folder: str | os.PathLike, result: TrainResult, base_model: str | os.PathLike | None = None,
                     steps: int | None = None) -> Path:
    """Write ``README.md`` for a :class:`~hf_lowdata.workflow.TrainResult` saved in ``folder``."""
    from .workflow import budget_fields_read, output_kind

    path = Path(folder)
    kind = output_kind(path)
    adapter_config = None
    if kind == "peft":
        adapter_config = json.loads((path / "adapter_config.json").read_text())
    text = build_model_card(
        method=result.method, kind=kind, base_model=base_model, label_names=result.classifier.label_names,
        budget=result.budget, options=result.options, steps=steps, data_summary=result.data_summary,
        evaluation=result.evaluation, trainable_parameters=result.trainable_parameters,
        adapter_bytes=result.adapter_bytes, train_seconds=result.train_seconds, adapter_config=adapter_config,
        resumed_from=result.resumed_from, earlier_seconds=result.earlier_seconds,
        budget_fields=budget_fields_read(result.method),
    )
    readme = path / "README.md"
    readme.write_text(text, encoding="utf-8")
    return readme
