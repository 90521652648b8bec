"""scripts/sparse_expert_meta_train.py: it warms the very cache entries the benchmark then reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_lowdata.bench.measure import environment
from hf_lowdata.bench.runner import BenchConfig, RunSpec, execute_run
from hf_lowdata.data import load_data
from hf_lowdata.methods import SharedCache
from hf_lowdata.methods import sparse_expert as se
from tests.helpers import load_script, toy_sentences, write_jsonl


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """Two evaluated datasets and two sources: meta-training for ``toya`` draws from every source but itself."""
    for i, name in enumerate(("toya", "toyb", "src1", "src2")):
        folder = tmp_path / name
        folder.mkdir()
        write_jsonl(folder / "train.jsonl", toy_sentences(30, i))
        write_jsonl(folder / "dev.jsonl", toy_sentences(6, 10 + i))
        write_jsonl(folder / "test.jsonl", toy_sentences(10, 20 + i))
        (folder / "meta.json").write_text(json.dumps({"name": name, "label_names": ["negative", "positive"]}))
    return tmp_path


def _bench_key(monkeypatch, data_dir: Path, dataset: str, model: str, options: dict) -> str:
    """The key of the plan a real benchmark run (runner.execute_run) hands to meta_train."""
    keys = []

    def stop(plan, *args, **kwargs):
        keys.append(plan.key())
        raise RuntimeError("stop before meta-training")

    monkeypatch.setattr(se, "meta_train", stop)
    config = BenchConfig(data_dir=data_dir, datasets=[dataset], methods=["sparse_expert"], out=data_dir / "out",
                         shots=[2], seeds=[0], model=model, options=dict(options))
    record = execute_run(RunSpec(dataset, "sparse_expert", 0, k=2), load_data(data_dir / dataset, empty_text="drop"),
                         {}, config, SharedCache(), environment(), model)
    assert record["status"] == "failed" and "stop before meta-training" in record["error"], record.get("error")
    return keys[0]


def test_the_script_builds_the_benchmarks_plan_for_each_dataset(monkeypatch, data_dir, tiny_bert_dir):
    """The script planned with no task (held out only test splits), a key no bench run ever looks up."""
    options = {"sources": "toya,toyb,src1,src2", "meta_steps": 3}
    script = load_script("sparse_expert_meta_train")
    plans = script.bench_plans("sparse_expert", data_dir, ["toya", "toyb"], str(tiny_bert_dir), options)
    assert set(plans) == {"toya", "toyb"}
    assert plans["toya"].sources == ("toyb", "src1", "src2")
    for dataset, plan in plans.items():
        assert plan.key() == _bench_key(monkeypatch, data_dir, dataset, str(tiny_bert_dir), options)


def test_a_dataset_not_in_the_data_dir_says_so(data_dir):
    with pytest.raises(SystemExit, match="--datasets names folders in --data-dir"):
        load_script("sparse_expert_meta_train").bench_plans("sparse_expert", data_dir, ["nope"],
                                                            options={"sources": "src1"})


def test_without_datasets_it_says_why_they_are_needed(monkeypatch, capsys, data_dir):
    monkeypatch.setattr("sys.argv", ["sparse_expert_meta_train.py", "--data-dir", str(data_dir)])
    with pytest.raises(SystemExit):
        load_script("sparse_expert_meta_train").main()
    assert "--datasets sst2,cr" in capsys.readouterr().err
