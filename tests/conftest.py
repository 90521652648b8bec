"""Shared fixtures: offline mode, the shared data folder, tiny random models, toy data folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA, toy_sentences, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The unit tests are CPU tests (CI has no GPU; tiny models, bit-exact comparisons): on a machine with
# a GPU, hide it so that the methods' "cuda if available" defaults do not split a test across devices.
# HF_LOWDATA_TEST_CUDA=1 keeps the GPU visible (for running the suite on CUDA deliberately).
if os.environ.get("HF_LOWDATA_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# Under pytest-xdist (the README's ``-n 2``) each worker is one of the processes sharing the cores: one
# OpenMP thread each (and in the processes they start), since oversubscribed small models run far slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


#: Modules reading the outputs that ``tests/cli/outputs.py`` trains once per process (every method): under xdist
#: one worker runs them all, so the outputs are trained once and the module fixture that loads them is set up once.
TRAINED_OUTPUT_MODULES = frozenset({"tests/cli/test_loading.py", "tests/cli/test_train_predict.py",
                                    "tests/test_hub.py", "tests/test_model_card.py"})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's ``loadgroup`` with :data:`TRAINED_OUTPUT_MODULES` as one group: every other test is its own unit.
    (The ``xdist_group`` mark cannot carry this: xdist 3.8 marks groups by rewriting node ids, which pytest 9
    no longer reads.)"""
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None  # another mode the user chose (each, loadfile, worksteal, ...)
    from xdist.scheduler import LoadGroupScheduling

    class TrainedOutputsTogether(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "trained_outputs" if nodeid.split("::", 1)[0] in TRAINED_OUTPUT_MODULES else nodeid

    return TrainedOutputsTogether(config, log)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for a test: on a shared 2-core machine, two OpenMP threads per process
    oversubscribe the cores and make small models ~40x slower. Use with ``pytest.mark.usefixtures``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "sst2" / "train.jsonl").is_file():
        pytest.fail(f"The shared data folder is missing at {SHARED_DATA} (set HF_LOWDATA_SHARED_DATA).")
    return SHARED_DATA


@pytest.fixture(scope="session")
def toy_data_dir(tmp_path_factory) -> Path:
    """A data dir with two toy datasets (same labels) in the shared format."""
    root = tmp_path_factory.mktemp("toydata")
    for name, seed in (("toya", 0), ("toyb", 1)):
        folder = root / name
        folder.mkdir()
        write_jsonl(folder / "train.jsonl", toy_sentences(80, seed))
        write_jsonl(folder / "test.jsonl", toy_sentences(40, seed + 100))
        (folder / "meta.json").write_text(json.dumps({"name": name, "label_names": ["negative", "positive"]}))
    return root


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from hf_lowdata.models import resolve_model_path

    return resolve_model_path(None)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A tiny random BERT encoder (2 layers, hidden 32) with MiniLM's tokenizer, saved like MiniLM."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
