"""scripts/sparse_expert_images.py: cached adapters are reused only under their own settings; a rerun
does not repeat finished results."""

from __future__ import annotations

import argparse
import json
import sys
from types import SimpleNamespace

import pytest

from tests.helpers import load_script


@pytest.fixture
def images():
    return load_script("sparse_expert_images")


def _args(out, **changes):
    values = dict(out=out, shots=[1], seeds=[0], variants=["smat"], size=64, meta_steps=100, meta_batch=4,
                  meta_lr=5e-4, query_per_class=8, finetune="none", finetune_steps=20, finetune_lr=1e-4)
    return argparse.Namespace(**{**values, **changes})


def _finished_adapter(images, args, variant="smat"):
    folder = args.out / variant
    folder.mkdir(parents=True)
    (folder / "meta_training.json").write_text(json.dumps({"settings": images.meta_settings(variant, args),
                                                           "seconds": 1.0, "history": []}))
    return folder


def test_an_adapter_is_reused_under_its_own_settings(images, tmp_path):
    folder = _finished_adapter(images, _args(tmp_path))
    assert images.meta_train("smat", _args(tmp_path), train=None) == folder  # train=None: nothing is trained


@pytest.mark.parametrize("change", [{"meta_steps": 1000}, {"size": 96}, {"meta_lr": 1e-3}, {"meta_batch": 8}])
def test_an_adapter_of_other_settings_is_refused(images, tmp_path, change):
    """An adapter meta-trained with --meta-steps 100 at 64 px was silently reused by a run asking for others."""
    _finished_adapter(images, _args(tmp_path))
    key, value = next(iter(change.items()))
    with pytest.raises(SystemExit, match=rf"{key}={value!r}.*another --out.*delete"):
        images.meta_train("smat", _args(tmp_path, **change), train=None)


def test_a_checkpoint_folder_of_other_settings_is_not_resumed(images, tmp_path):
    work = tmp_path / "smat.work"
    work.mkdir()
    (work / images.SETTINGS_FILE).write_text(json.dumps(images.meta_settings("smat", _args(tmp_path))))
    with pytest.raises(SystemExit, match=r"smat\.work.*meta_steps=1000"):
        images.meta_train("smat", _args(tmp_path, meta_steps=1000), train=None)


def test_a_rerun_after_a_kill_adds_only_the_missing_results(images, tmp_path, monkeypatch):
    """results.jsonl holds seed 0 and half a line (a kill mid-append): the rerun evaluates seed 1 only, and
    the file is left with one complete record per run."""
    out = tmp_path / "out"
    out.mkdir()
    done = {"variant": "pretrained", "k": 1, "seed": 0, "accuracy": 0.5, "routing": None, "finetune": "none", "size": 64}
    (out / "results.jsonl").write_text(json.dumps(done) + "\n" + json.dumps({**done, "seed": 1})[:30])
    evaluated = []

    def evaluate(variant, adapter, task, args):
        evaluated.append((variant, task.k, task.seed))
        return {**done, "seed": task.seed}

    monkeypatch.setattr(images, "load_fashion_mnist", lambda split: None)
    monkeypatch.setattr(images, "class_subset", lambda data, classes: None)
    monkeypatch.setattr(images, "make_image_few_shot_task", lambda train, test, k, seed, name: SimpleNamespace(k=k, seed=seed))
    monkeypatch.setattr(images, "evaluate", evaluate)
    monkeypatch.setattr(sys, "argv", ["sparse_expert_images.py", "--out", str(out), "--shots", "1", "--seeds", "0,1",
                                      "--variants", "pretrained"])
    images.main()
    assert evaluated == [("pretrained", 1, 1)]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["seed"] for line in lines] == [0, 1]
