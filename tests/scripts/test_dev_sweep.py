"""scripts/dev_sweep.py: its grid, the context each run gets, its output file."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from hf_lowdata.data import normalize_text
from hf_lowdata.methods import get_method
from hf_lowdata.methods.sparse_expert import DATA_DIR_ENV
from tests.helpers import load_script, toy_sentences, write_jsonl


def _sweep():
    return load_script("dev_sweep")


def test_grid_is_the_cross_product_with_numbers_parsed():
    grid = _sweep().parse_grid(["lr=1e-4,5e-5", "finetune=none,lora"])
    assert grid == [{"lr": 1e-4, "finetune": "none"}, {"lr": 1e-4, "finetune": "lora"},
                    {"lr": 5e-5, "finetune": "none"}, {"lr": 5e-5, "finetune": "lora"}]


def test_grid_keeps_integers_integers():
    """Integer options (projector_layers) must reach configs as int, not 2.0."""
    grid = _sweep().parse_grid(["projector_layers=0,2", "lr=1e-3"])
    assert grid == [{"projector_layers": 0, "lr": 1e-3}, {"projector_layers": 2, "lr": 1e-3}]
    assert all(type(row["projector_layers"]) is int for row in grid)


# --------------------------------------------------------------------------------------------------
# main(), with the method's fit replaced by a recorder (no training)


class _Fitted:
    train_step_seconds = None

    def predict(self, texts):
        return np.zeros(len(texts), dtype=int)


class _Recorder:
    """Stands in for the method: records (task, ctx) of each fit; ``on_fit`` sees them too."""

    def __init__(self, on_fit=None):
        self.calls, self.on_fit = [], on_fit

    def fit(self, task, ctx):
        self.calls.append((task, ctx))
        if self.on_fit is not None:
            self.on_fit(task, ctx)
        return _Fitted()


def _dataset(folder, train, dev=None, test=None):
    folder.mkdir(parents=True)
    write_jsonl(folder / "train.jsonl", train)
    if dev is not None:
        write_jsonl(folder / "dev.jsonl", dev)
    if test is not None:
        write_jsonl(folder / "test.jsonl", test)
    (folder / "meta.json").write_text(json.dumps({"name": folder.name, "label_names": ["negative", "positive"]}))


@pytest.fixture
def sweep_data(tmp_path):
    """``toy`` (train / dev / test) and a source dataset ``src`` whose pool holds toy's dev sentences (as MR's
    pool holds SST-2's)."""
    dev = toy_sentences(12, 2)
    _dataset(tmp_path / "toy", toy_sentences(40, 1), dev, toy_sentences(10, 3))
    _dataset(tmp_path / "src", toy_sentences(40, 4) + dev, test=toy_sentences(10, 5))
    return tmp_path


def _main(monkeypatch, tmp_path, data_dir, method, grid, recorder, seeds="0", draw=("--k", "2")):
    sweep = _sweep()
    monkeypatch.setattr(sweep, "get_method", lambda name: recorder)
    out = tmp_path / "out" / "sweep.json"
    monkeypatch.setattr(sys, "argv", ["dev_sweep.py", "--data-dir", str(data_dir), "--datasets", "toy",
                                      "--method", method, *draw, "--seeds", seeds, "--grid", *grid,
                                      "--out", str(out)])
    sweep.main()
    return out


def test_sparse_expert_never_meta_trains_on_the_dev_sentences_it_is_scored_on(monkeypatch, tmp_path, sweep_data):
    """The sweep's SparseExpert plan holds out the whole evaluated dataset, dev split included, as the
    benchmark's does: before, only the labelled set and the test texts were held out, and the dev
    sentences in a source's pool (573 of SST-2's 872 in MR's) were meta-trained on."""
    monkeypatch.setenv(DATA_DIR_ENV, str(sweep_data))  # the sources are found either way
    method, plans = get_method("sparse_expert"), []
    recorder = _Recorder(lambda task, ctx: plans.append(method.plan(task, ctx)))
    _main(monkeypatch, tmp_path, sweep_data, "sparse_expert", ["sources=src"], recorder)
    dev = {normalize_text(r["text"]) for r in map(json.loads, (sweep_data / "toy" / "dev.jsonl").open())}
    assert len(plans) == 1
    assert dev <= {normalize_text(t) for t in plans[0].exclude_texts}


def test_sparse_experts_sources_are_checked_in_the_data_dir_before_any_training(monkeypatch, tmp_path, sweep_data):
    """The up-front check looks for the sources where the runs do (--data-dir), not only in the environment."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    recorder = _Recorder()
    with pytest.raises(SystemExit, match="--grid sources=nowhere: sparse_expert meta-trains on the source datasets "
                                         "nowhere, but nowhere not found in"):
        _main(monkeypatch, tmp_path, sweep_data, "sparse_expert", ["sources=nowhere"], recorder)
    assert recorder.calls == []
    _main(monkeypatch, tmp_path, sweep_data, "sparse_expert", ["sources=src"], recorder)
    assert len(recorder.calls) == 1


def test_budget_fields_in_the_grid_change_the_budget(monkeypatch, tmp_path, sweep_data):
    """``max_steps=10,200`` used to land in budget.options and leave max_steps at the method's 160."""
    recorder = _Recorder()
    _main(monkeypatch, tmp_path, sweep_data, "ftp", ["max_steps=10,200", "lr=3e-4"], recorder)
    budgets = [ctx.budget_for("ftp") for _, ctx in recorder.calls]
    assert [b.max_steps for b in budgets] == [10, 200]
    assert all(b.learning_rate == 3e-4 and "max_steps" not in b.options for b in budgets)


def test_method_options_in_the_grid_reach_the_method(monkeypatch, tmp_path, sweep_data):
    recorder = _Recorder()
    _main(monkeypatch, tmp_path, sweep_data, "ftp", ["kappa=0.5,1"], recorder)
    assert [ctx.option("ftp", "kappa") for _, ctx in recorder.calls] == [0.5, 1]


def test_a_grid_value_the_method_refuses_fails_before_any_training(monkeypatch, tmp_path, sweep_data):
    """kappa=2 (FTPConfig takes [0, 1]) failed in its own runs, after the runs of kappa=0.5 had trained."""
    recorder = _Recorder()
    with pytest.raises(SystemExit, match=r"--grid kappa=2: ftp: FTPConfig.kappa must lie in \[0, 1\]"):
        _main(monkeypatch, tmp_path, sweep_data, "ftp", ["kappa=0.5,2"], recorder)
    assert recorder.calls == []


def test_a_misspelt_grid_key_is_refused_before_any_training(monkeypatch, tmp_path, sweep_data):
    recorder = _Recorder()
    with pytest.raises(SystemExit, match="did you mean 'kappa'"):
        _main(monkeypatch, tmp_path, sweep_data, "ftp", ["kapa=0.5"], recorder)
    assert recorder.calls == []


def test_the_output_holds_every_run_and_one_seed_prints_no_nan(monkeypatch, tmp_path, sweep_data, capsys):
    out = _main(monkeypatch, tmp_path, sweep_data, "ftp", ["lr=1e-4,2e-4"], _Recorder())
    rows = json.loads(out.read_text())
    assert [(r["lr"], r["seed"]) for r in rows] == [(1e-4, 0), (2e-4, 0)]
    assert "nan" not in capsys.readouterr().out


@pytest.mark.parametrize(("draw", "counts"), [
    (("--k", "6", "--uneven", "3"), [6, 2]),  # class 0 whole, a third of class 1
    (("--k", "5", "--uneven", "2"), [5, 3]),  # rounded up
    (("--total", "9"), None),  # by class frequency: the pool's own proportions
])
def test_total_and_uneven_draws_and_macro_f1_in_every_row(monkeypatch, tmp_path, sweep_data, draw, counts):
    recorder = _Recorder()
    out = _main(monkeypatch, tmp_path, sweep_data, "ftp", ["kappa=0.5"], recorder, draw=draw)
    task = recorder.calls[0][0]
    if counts is not None:
        assert np.bincount(task.labelled.labels).tolist() == counts
    else:
        assert len(task.labelled) == 9 and task.n == 9
    row = json.loads(out.read_text())[0]
    # the recorder predicts class 0 for every dev text: macro-F1 is that of a one-class prediction
    assert 0 < row["dev_macro_f1"] < row["dev_accuracy"] < 1
    assert ("total" in row) == (counts is None) and row["uneven"] == (1 if counts is None else int(draw[3]))
