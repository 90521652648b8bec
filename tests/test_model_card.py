"""Model cards: metadata the Hub reads, the sections a reader needs, and a usage snippet that runs."""

from __future__ import annotations

import json
import re

import pytest
from huggingface_hub.repocard import metadata_load

from hf_lowdata.budgets import get_budget
from hf_lowdata.methods import METHODS
from hf_lowdata.model_card import build_model_card, hub_base_model
from hf_lowdata.workflow import Evaluation, output_kind
from tests.cli.outputs import runnable_methods, trained
from tests.helpers import run_python


def _sections(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, flags=re.M)


def test_card_of_a_trained_adapter_has_metadata_and_every_section():
    result = trained("lora")
    text = (result.output_dir / "README.md").read_text()
    meta = metadata_load(result.output_dir / "README.md")
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"hf_lowdata", "lora", "peft"} <= set(meta["tags"])
    assert meta["hf_lowdata"]["label_names"] == ["negative", "positive"]
    assert meta["hf_lowdata"]["evaluation"]["accuracy"] == round(result.evaluation.accuracy, 4)
    assert _sections(text) == ["Training data", "Configuration", "Evaluation", "Usage"]
    assert METHODS["lora"].paper in text
    assert "| labelled examples | 24 |" in text and "negative: 12, positive: 12" in text
    assert "| optimizer steps | 2 |" in text and "| batch size | 4 |" in text and "`r` | `8`" in text
    assert f"{result.evaluation.accuracy:.4f} (95% CI" in text and "| examples | 16 (toy-eval.jsonl) |" in text
    config = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert f'"peft_type": "{config["peft_type"]}"' in text


@pytest.mark.parametrize(("method", "uses"), [("probe", False), ("twin_turbo", True)])
def test_unlabelled_examples_are_counted_only_for_methods_that_use_them(method, uses):
    """The probe's card and eval_results.json claimed the 16 unlabelled examples it was given and never read."""
    assert METHODS[method].uses_unlabelled is uses
    folder = trained(method).output_dir  # the toy task holds 16 unlabelled examples
    text = (folder / "README.md").read_text()
    record = json.loads((folder / "eval_results.json").read_text())["data"]
    if uses:
        assert "| unlabelled examples | 16 |" in text
        assert record["unlabelled_examples"] == 16 and "unlabelled_not_used" not in record
    else:
        assert "| unlabelled examples | 0 (16 given, not used by this method) |" in text
        assert record["unlabelled_examples"] == 0 and record["unlabelled_not_used"] == 16


def test_usage_snippet_imports_hf_lowdata_before_loading():
    text = (trained("lora").output_dir / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    lines = snippet.splitlines()
    first_import = next(i for i, line in enumerate(lines) if line.startswith("import hf_lowdata"))
    loading = next(i for i, line in enumerate(lines) if "= PeftModel.from_pretrained(" in line)
    assert first_import < loading and first_import == 0
    assert "`import hf_lowdata` must come before `PeftModel.from_pretrained`" in text
    assert "pip install hf-lowdata" in text


@pytest.mark.parametrize("method", runnable_methods())
def test_every_method_gets_a_card_tagged_with_its_name(method):
    folder = trained(method).output_dir
    meta = metadata_load(folder / "README.md")
    assert method in meta["tags"] and "hf_lowdata" in meta["tags"]
    assert meta["hf_lowdata"]["method"] == method and meta["hf_lowdata"]["label_names"] == ["negative", "positive"]
    if output_kind(folder) == "peft":
        assert meta["library_name"] == "peft" and "peft" in meta["tags"]


def test_usage_snippet_runs_in_a_fresh_process(tiny_bert_dir):
    """The card's code, with the adapter folder filled in, predicts one of the labels."""
    result = trained("lora", str(tiny_bert_dir))
    text = (result.output_dir / "README.md").read_text()
    assert metadata_load(result.output_dir / "README.md").get("base_model") is None  # a local folder is no Hub id
    snippet = re.search(r"```python\n(.*?)```", text, flags=re.S).group(1)
    snippet = snippet.replace("path/or/hub-id/of/this/adapter", str(result.output_dir))
    printed = run_python(snippet).stdout.strip().splitlines()[-1]
    assert printed in {"negative", "positive"}


def test_card_without_evaluation_and_for_other_kinds():
    budget = get_budget("probe")
    text = build_model_card(method="probe", kind="probe", base_model=None, label_names=["a", "b", "c"], budget=budget)
    meta = metadata_load_text(text)
    assert meta["library_name"] == "hf_lowdata" and "peft" not in meta["tags"]
    assert "No evaluation set was given" in text and "load_classifier" in text
    evaluation = Evaluation(0.5, 0.4, 10, "x/dev.csv", ("a", "b"), ((3, 2), (3, 2)), (0.2, 0.8), (0.1, 0.7))
    full = build_model_card(method="full", kind="full", base_model="/local/model", label_names=["a", "b"],
                            evaluation=evaluation)
    assert metadata_load_text(full)["library_name"] == "transformers"
    assert "0.5000 (95% CI 0.200-0.800)" in full and "10 (dev.csv)" in full
    assert 'pipeline("text-classification"' in full


def test_table_cells_escape_pipes_so_every_row_keeps_two_cells():
    """A LoRA target_modules regex ``.*(query|value)`` split its row in three (GitHub splits at ``|`` even
    inside backticks); label names and file names may hold a ``|`` too."""
    evaluation = Evaluation(0.5, 0.4, 10, "x/dev|v2.csv", ("a|b", "c"), ((3, 2), (3, 2)), (0.2, 0.8), (0.1, 0.7))
    text = build_model_card(method="lora", kind="peft", base_model=None, label_names=["a|b", "c"],
                            budget=get_budget("lora"), options={"target_modules": ".*(query|value)"},
                            data_summary={"labelled_examples": 4, "examples_per_class": {"a|b": 2, "c": 2}},
                            evaluation=evaluation)
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert len(rows) > 10
    for row in rows:
        assert len(re.split(r"(?<!\\)\|", row)) == 4, row  # | key | value |: three unescaped pipes
    assert "| option `target_modules` | `.*(query\\|value)` |" in text
    assert "a\\|b: 2, c: 2" in text and "10 (dev\\|v2.csv)" in text


def test_usage_snippet_spells_label_names_outside_the_basic_plane_as_python_reads_them():
    """The snippet wrote its labels with json.dumps, whose ASCII escapes spell an emoji as a surrogate pair
    (``\\ud83d\\ude1e``): Python reads that as two lone surrogates, so the snippet printed a label that is
    not the class name, and printing it raised UnicodeEncodeError."""
    names = ["négatif 😞", "中立 neutral", 'say "hi"\\', "Positive ✓"]
    text = build_model_card(method="lora", kind="peft", base_model=None, label_names=names,
                            budget=get_budget("lora"))
    line = next(line for line in text.splitlines() if line.startswith("labels = "))
    scope: dict = {}
    exec(line, scope)  # noqa: S102 - the card's own line
    assert scope["labels"] == names


def test_training_time_of_a_resumed_run_says_what_it_covers():
    def time_row(**kwargs) -> str:
        text = build_model_card(method="lora", kind="peft", base_model=None, label_names=["a", "b"],
                                budget=get_budget("lora"), train_seconds=20.04, **kwargs)
        return next(line for line in text.splitlines() if line.startswith("| training time |"))

    assert time_row() == "| training time | 20.0 s |"
    assert time_row(resumed_from="/out/checkpoints/checkpoint-4", earlier_seconds=7.9) == (
        "| training time | 20.0 s in total: 7.9 s up to checkpoint-4, 12.1 s after resuming from it |")
    assert time_row(resumed_from="/out/checkpoints/checkpoint-4", earlier_seconds=None) == (
        "| training time | 20.0 s in this session, resumed from checkpoint-4 (the earlier sessions' time was not "
        "recorded) |")


def test_hub_ids_of_base_models():
    assert hub_base_model(None) == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_base_model("minilm") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_base_model("org/name") == "org/name"
    assert hub_base_model("/some/local/folder") is None
    # an org/name id resolved from the Hugging Face cache: the card names the id, not this machine's cache path
    assert hub_base_model("/home/me/.cache/huggingface/hub/models--org--name/snapshots/0123abc") == "org/name"
    assert hub_base_model("/cache/models--gpt2/snapshots/0123abc") == "gpt2"
    assert hub_base_model("/cache/datasets--org--name/snapshots/0123abc") is None


def metadata_load_text(text: str) -> dict:
    import yaml

    return yaml.safe_load(text.split("---")[1])
