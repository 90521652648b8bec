"""scripts/tune_budgets.py: a shorthand for dev_sweep's lr grid over several methods."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests.helpers import REPO_ROOT, load_script, toy_sentences, write_jsonl


class _Fitted:
    train_step_seconds = None

    def predict(self, texts):
        return np.zeros(len(texts), dtype=int)


@pytest.fixture
def tune(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO_ROOT / "scripts"))  # as when run: `import dev_sweep` finds the file beside it
    return load_script("tune_budgets")


def test_variants_probe_and_one_seed(monkeypatch, tmp_path, tune, capsys):
    """A variant trains with its method's budget (get_budget('twin_turbo_ce') raised KeyError), the probe's
    value is its C, and a single seed prints its accuracy, not '± nan'."""
    folder = tmp_path / "toy"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", toy_sentences(30, 1))
    write_jsonl(folder / "dev.jsonl", toy_sentences(8, 2))
    (folder / "meta.json").write_text(json.dumps({"name": "toy", "label_names": ["negative", "positive"]}))
    contexts = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def fit(self, task, ctx):
            contexts.append((self.name, ctx))
            return _Fitted()

    monkeypatch.setattr(tune.dev_sweep, "get_method", Recorder)
    out = tmp_path / "tuning.json"
    monkeypatch.setattr(sys, "argv", ["tune_budgets.py", "--data-dir", str(tmp_path), "--datasets", "toy", "--k", "2",
                                      "--seeds", "0", "--grid", "twin_turbo_ce:1e-3", "probe:0.5", "--out", str(out)])
    tune.main()
    (_, tt), (_, probe) = contexts
    assert tt.budget_for("twin_turbo").learning_rate == 1e-3
    assert probe.option("probe", "C") == 0.5
    assert [(r["method"], r["value"]) for r in json.loads(out.read_text())] == [("twin_turbo_ce", 1e-3), ("probe", 0.5)]
    printed = capsys.readouterr().out
    assert "nan" not in printed and "| toy | probe | 0.5 | 50.0 |" in printed


def test_a_malformed_entry_says_what_it_should_look_like(tune):
    with pytest.raises(SystemExit, match="method:value,value"):
        tune.parse_entries(["lora=1e-3"])
