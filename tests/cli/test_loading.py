"""Loading anywhere: every PEFT-adapter method's output loads in a fresh process through PEFT's and
transformers' own entry points and gives the outputs the trained model gave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_lowdata.workflow import output_kind
from tests.cli.outputs import peft_adapter_methods, trained
from tests.helpers import run_python

TEXTS = ["the film was great and the cast was wonderful", "an awful, boring plot", "the music was fine"]

FRESH_PROCESS = """
import json
import numpy as np, torch
import hf_lowdata  # must come before PeftModel.from_pretrained (registers hf_lowdata's PEFT types)
from peft import AutoPeftModelForSequenceClassification, PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

adapter, texts, out = {adapter!r}, {texts!r}, {out!r}
base_path = json.load(open(adapter + "/adapter_config.json"))["base_model_name_or_path"]
batch = AutoTokenizer.from_pretrained(base_path)(texts, return_tensors="pt", padding=True, truncation=True, max_length=32)

def logits(model):
    with torch.no_grad():
        return model.eval()(**batch).logits.numpy()

results = {{}}
torch.manual_seed(123)  # another random head than in training: the adapter must replace it
results["base_only"] = logits(AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2))
torch.manual_seed(123)
base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2)
results["PeftModel.from_pretrained"] = logits(PeftModel.from_pretrained(base, adapter))
results["AutoPeftModelForSequenceClassification"] = logits(AutoPeftModelForSequenceClassification.from_pretrained(adapter))
torch.manual_seed(456)
plain = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=2)
plain.load_adapter(adapter)
results["load_adapter"] = logits(plain)
np.savez(out, **results)
"""


@pytest.mark.parametrize("method", peft_adapter_methods())
def test_adapter_loads_in_a_fresh_process_with_identical_outputs(method, tmp_path):
    result = trained(method)
    assert output_kind(result.output_dir) == "peft"
    model, tokenizer = result.classifier.model, result.classifier.tokenizer
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True, truncation=True, max_length=32)
    with torch.no_grad():
        expected = model.eval()(**batch).logits.numpy()
    out = tmp_path / "logits.npz"
    run_python(FRESH_PROCESS.format(adapter=str(result.output_dir), texts=TEXTS, out=str(out)))
    loaded = np.load(out)
    for entry in ("PeftModel.from_pretrained", "AutoPeftModelForSequenceClassification", "load_adapter"):
        np.testing.assert_allclose(loaded[entry], expected, atol=1e-5, err_msg=entry)
    # The check can fail: the base model with a random head gives other outputs.
    assert not np.allclose(loaded["base_only"], expected, atol=1e-3)
