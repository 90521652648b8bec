"""Loading anywhere: every registered method's saved output loads in a fresh process and gives the
outputs the trained model gave. PEFT adapters load through PEFT's and transformers' own entry points
(``PeftModel.from_pretrained``, ``AutoPeftModelForSequenceClassification``, ``load_adapter``); the
other kinds (full fine-tuning, probe, SetFit, prototype heads) through ``load_classifier``.

All outputs are loaded in one fresh interpreter (an interpreter start costs more than a load)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hf_lowdata.workflow import output_kind
from tests.cli.outputs import runnable_methods, trained
from tests.helpers import run_python

TEXTS = ["the film was great and the cast was wonderful", "an awful, boring plot", "the music was fine"]

FRESH_PROCESS = """
import json, traceback
import numpy as np, torch
import hf_lowdata  # must come before PeftModel.from_pretrained (registers hf_lowdata's PEFT types)
from peft import AutoPeftModelForSequenceClassification, PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from hf_lowdata.workflow import load_classifier

entries, texts, out = {entries!r}, {texts!r}, {out!r}

def logits(model, batch):
    with torch.no_grad():
        return model.eval()(**batch).logits.numpy().tolist()

def peft_paths(folder):
    base_path = json.load(open(folder + "/adapter_config.json"))["base_model_name_or_path"]
    batch = AutoTokenizer.from_pretrained(base_path)(texts, return_tensors="pt", padding=True, truncation=True,
                                                     max_length=32)
    found = {{}}
    torch.manual_seed(123)  # another random head than in training: the adapter must replace it
    found["base_only"] = logits(AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2), batch)
    torch.manual_seed(123)
    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2)
    found["PeftModel.from_pretrained"] = logits(PeftModel.from_pretrained(base, folder), batch)
    found["AutoPeftModelForSequenceClassification"] = logits(
        AutoPeftModelForSequenceClassification.from_pretrained(folder), batch)
    torch.manual_seed(456)
    plain = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2)
    plain.load_adapter(folder)
    found["load_adapter"] = logits(plain, batch)
    return found

results = {{}}
for method, (folder, kind) in entries.items():
    try:
        if kind == "peft":
            results[method] = peft_paths(folder)
        else:
            results[method] = {{"load_classifier": load_classifier(folder).predict_proba(texts).tolist()}}
    except Exception:
        results[method] = {{"error": traceback.format_exc(limit=6)}}
json.dump(results, open(out, "w"))
"""


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict:
    """Train every runnable method (cached for the other modules), then load every output in one fresh process."""
    entries, failures = {}, {}
    for method in runnable_methods():
        try:
            folder = trained(method).output_dir
            entries[method] = (str(folder), output_kind(folder))
        except Exception as err:  # noqa: BLE001 - reported by that method's test
            failures[method] = {"error": f"training failed: {type(err).__name__}: {err}"}
    out = tmp_path_factory.mktemp("fresh") / "results.json"
    run_python(FRESH_PROCESS.format(entries=entries, texts=TEXTS, out=str(out)), timeout=1800)
    return {**json.loads(out.read_text()), **failures}


@pytest.mark.parametrize("method", runnable_methods())
def test_saved_output_loads_in_a_fresh_process_with_identical_outputs(method, fresh):
    found = fresh[method]
    assert "error" not in found, found.get("error")
    result = trained(method)
    classifier = result.classifier
    if output_kind(result.output_dir) != "peft":
        np.testing.assert_allclose(found["load_classifier"], classifier.predict_proba(TEXTS, use_cache=False), atol=1e-5)
        return
    batch = classifier.tokenizer(TEXTS, return_tensors="pt", padding=True, truncation=True, max_length=32)
    with torch.no_grad():
        expected = classifier.model.eval()(**batch).logits.numpy()
    for entry in ("PeftModel.from_pretrained", "AutoPeftModelForSequenceClassification", "load_adapter"):
        np.testing.assert_allclose(found[entry], expected, atol=1e-5, err_msg=f"{method} via {entry}")
    # The check can fail: the base model with a random head gives other outputs.
    assert not np.allclose(found["base_only"], expected, atol=1e-3)
