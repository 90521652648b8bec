"""The feature cache: one backbone pass per input, memory and disk, and training from it = training without it."""

from __future__ import annotations

import pytest
import torch

from hf_lowdata.features import (
    FeatureCache,
    TokenStateDataset,
    collate_token_states,
    image_token_states,
    text_token_states,
)
from hf_lowdata.models import load_encoder, load_tokenizer
from tests.helpers import toy_sentences
from tests.test_leftovers import age


def _counting_encoder(folder):
    encoder = load_encoder(folder)
    calls = []
    encoder.register_forward_hook(lambda module, args, output: calls.append(1))
    return encoder, calls


def test_each_input_goes_through_the_backbone_once(tiny_bert_dir, tmp_path):
    encoder, calls = _counting_encoder(tiny_bert_dir)
    tok = load_tokenizer(tiny_bert_dir)
    texts = [r["text"] for r in toy_sentences(100, 0)]
    cache = FeatureCache(tmp_path)
    first = text_token_states(cache, encoder, tok, texts, 64, "tiny")
    assert len(calls) == 2 and cache.computed == 100  # 100 texts = 2 batches of 64: one forward pass
    again = text_token_states(cache, encoder, tok, texts[:50] + ["a new text"], 64, "tiny")
    assert len(calls) == 3 and cache.computed == 101  # only the new text is computed
    torch.testing.assert_close(again[0], first[0], atol=0, rtol=0)
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    assert [s.shape for s in first] == [(n, 32) for n in lengths]  # real tokens only, no padding

    reopened = FeatureCache(tmp_path)  # a later process: everything comes from disk
    from_disk = text_token_states(reopened, encoder, tok, texts, 64, "tiny")
    assert reopened.computed == 0 and len(calls) == 3
    torch.testing.assert_close(from_disk[7], first[7], atol=0, rtol=0)
    other_model = text_token_states(reopened, encoder, tok, texts[:3], 64, "another-model")
    assert reopened.computed == 3 and len(other_model) == 3  # keyed by model too
    shorter = text_token_states(reopened, encoder, tok, texts[:3], 4, "tiny")
    assert reopened.computed == 6 and all(s.shape[0] <= 4 for s in shorter)  # and by max_length


def test_fp16_storage_and_an_unreadable_shard(tiny_bert_dir, tmp_path):
    encoder = load_encoder(tiny_bert_dir)
    tok = load_tokenizer(tiny_bert_dir)
    texts = [r["text"] for r in toy_sentences(10, 1)]
    exact = text_token_states(FeatureCache(dtype=torch.float32), encoder, tok, texts, 64, "tiny")
    half = text_token_states(FeatureCache(tmp_path), encoder, tok, texts, 64, "tiny")
    assert half[0].dtype == torch.float32  # stored in fp16, returned in fp32
    torch.testing.assert_close(half[0], exact[0], atol=5e-3, rtol=1e-3)
    for shard in tmp_path.rglob("*.safetensors"):
        shard.write_bytes(b"not a safetensors file")  # damaged on disk
    with pytest.warns(UserWarning, match="unreadable feature-cache shard"):
        again = FeatureCache(tmp_path)
        recomputed = text_token_states(again, encoder, tok, texts, 64, "tiny")
    assert again.computed == 10
    torch.testing.assert_close(recomputed[0], half[0], atol=0, rtol=0)


def test_shards_staged_by_a_killed_process_are_swept(tiny_bert_dir, tmp_path):
    import subprocess
    import sys

    encoder, tok = load_encoder(tiny_bert_dir), load_tokenizer(tiny_bert_dir)
    texts = [r["text"] for r in toy_sentences(4, 2)]
    text_token_states(FeatureCache(tmp_path), encoder, tok, texts[:2], 64, "tiny")
    (folder,) = {p.parent for p in tmp_path.rglob("*.safetensors")}
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    staged = folder / f"abc.safetensors.tmp{proc.pid}"  # a process killed mid-write left it
    staged.write_bytes(b"half a shard")
    age(staged)
    text_token_states(FeatureCache(tmp_path), encoder, tok, texts, 64, "tiny")  # a later write sweeps the folder
    assert not staged.exists() and len(list(folder.glob("*.safetensors"))) == 2


def test_collate_pads_and_masks():
    a, b = torch.ones(3, 4), 2 * torch.ones(1, 4)
    batch = collate_token_states(list(TokenStateDataset([a, b], [1, 0])))
    assert batch["token_states"].shape == (2, 3, 4)
    assert batch["token_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["labels"].tolist() == [1, 0] and batch["token_states"][1, 1:].abs().sum() == 0
    with pytest.raises(ValueError, match="2 token-state entries but 1 labels"):
        TokenStateDataset([a, b], [1])


def test_image_tokens_are_the_final_feature_map():
    from hf_lowdata.vision import load_digits, load_efficientnet_lite0

    images = load_digits("train").images[:3]
    states = image_token_states(FeatureCache(), load_efficientnet_lite0().efficientnet, images, 64, "lite0")
    assert [s.shape for s in states] == [(4, 1280)] * 3


def test_training_from_the_cache_equals_training_without_it(tiny_bert_dir, tmp_path):
    """Same projector, same data order: cached (fp32) and uncached training end at the same adapter."""
    from tests.tuners.twin_turbo.test_objectives import _trainer

    cached = _trainer(tiny_bert_dir, tmp_path / "cached", cached=True)
    cached.train()
    uncached = _trainer(tiny_bert_dir, tmp_path / "uncached", cached=False)
    uncached.train()
    for (name, a), b in zip(cached.model.named_parameters(), uncached.model.parameters()):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=name)
    moved = [n for n, p in cached.model.named_parameters() if p.requires_grad]
    assert moved  # the adapters did train (checked against their start in the objectives tests)
    tok = load_tokenizer(tiny_bert_dir)
    inputs = tok(["the film was great and plot 1", "the cast was awful"], padding=True, return_tensors="pt")
    cached.model.eval()
    uncached.model.eval()
    torch.testing.assert_close(cached.model(**inputs).logits, uncached.model(**inputs).logits, atol=1e-4, rtol=0)


def test_a_float32_cache_never_serves_the_fp16_states_of_a_default_cache(tiny_bert_dir, tmp_path):
    """Both stored their shards in one folder per namespace, so a float32 cache opened on a directory a default
    cache had filled returned the fp16-rounded states as hits (0.0009 from exact)."""
    from hf_lowdata.features import FeatureCache, model_fingerprint, text_token_states
    from hf_lowdata.models import load_encoder, load_tokenizer

    encoder, tokenizer = load_encoder(tiny_bert_dir).eval(), load_tokenizer(tiny_bert_dir)
    key, texts = model_fingerprint(tiny_bert_dir, "text"), ["a good film", "a dull plot that drags on"]
    exact = text_token_states(FeatureCache(dtype=torch.float32), encoder, tokenizer, texts, 32, key)
    text_token_states(FeatureCache(tmp_path), encoder, tokenizer, texts, 32, key)  # fp16 shards on disk
    fp32 = FeatureCache(tmp_path, dtype=torch.float32)
    got = text_token_states(fp32, encoder, tokenizer, texts, 32, key)
    assert fp32.computed == 2
    for g, e in zip(got, exact):
        torch.testing.assert_close(g, e, atol=0, rtol=0)
    again = FeatureCache(tmp_path, dtype=torch.float32)  # and it is cached on disk in its own dtype
    text_token_states(again, encoder, tokenizer, texts, 32, key)
    assert again.computed == 0


def test_states_cached_before_batches_were_padded_on_the_right_are_not_served(tiny_bert_dir, tmp_path):
    """A cache filled with a left-padding tokenizer held batch-dependent states; the text namespace changed with
    the padding fix, so shards under the earlier namespace are never read."""
    from safetensors.torch import save_file

    from hf_lowdata.features import FeatureCache, digest, model_fingerprint, text_token_states
    from hf_lowdata.models import load_encoder, load_tokenizer

    encoder, tokenizer = load_encoder(tiny_bert_dir).eval(), load_tokenizer(tiny_bert_dir)
    key, texts = model_fingerprint(tiny_bert_dir, "text"), ["a good film", "a dull plot"]
    earlier = tmp_path / digest("text", key, "32")  # the namespace before the fix
    earlier.mkdir()
    save_file({digest(t): torch.zeros(3, 32, dtype=torch.float16) for t in texts}, str(earlier / "old.safetensors"))
    cache = FeatureCache(tmp_path)
    states = text_token_states(cache, encoder, tokenizer, texts, 32, key)
    assert cache.computed == 2 and all(s.abs().sum() > 0 for s in states)


def test_a_shard_whose_bytes_changed_on_disk_is_recomputed(tiny_bert_dir, tmp_path):
    """A flipped byte inside a shard's tensor data still parses as safetensors, so it loaded silently and
    served wrong states; the checksum written with each shard catches it."""
    encoder, tok = load_encoder(tiny_bert_dir).eval(), load_tokenizer(tiny_bert_dir)
    texts = [r["text"] for r in toy_sentences(6, 2)]
    first = text_token_states(FeatureCache(tmp_path), encoder, tok, texts, 64, "tiny")
    (shard,) = tmp_path.rglob("*.safetensors")
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40  # a byte of the last tensor's data: the file is still valid safetensors
    shard.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="do not match their checksum"):
        again = FeatureCache(tmp_path)
        recomputed = text_token_states(again, encoder, tok, texts, 64, "tiny")
    assert again.computed == 6
    for r, f in zip(recomputed, first):
        torch.testing.assert_close(r, f, atol=0, rtol=0)


def test_a_shard_without_a_checksum_is_recomputed(tiny_bert_dir, tmp_path):
    from safetensors.torch import save_file

    encoder, tok = load_encoder(tiny_bert_dir).eval(), load_tokenizer(tiny_bert_dir)
    texts = [r["text"] for r in toy_sentences(4, 3)]
    text_token_states(FeatureCache(tmp_path), encoder, tok, texts, 64, "tiny")
    (shard,) = tmp_path.rglob("*.safetensors")
    from hf_lowdata.features import _load_checked_shard

    save_file(_load_checked_shard(shard), str(shard))  # as an older version wrote it: no metadata
    with pytest.warns(UserWarning, match="no checksum"):
        again = FeatureCache(tmp_path)
        text_token_states(again, encoder, tok, texts, 64, "tiny")
    assert again.computed == 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_editing_returned_states_in_place_never_changes_a_later_hit(tiny_bert_dir, dtype):
    """Lookups returned inference tensors (an in-place edit or a backward pass through them raised) and a float32
    cache returned its own stored tensors; now each lookup returns ordinary tensors of its own."""
    encoder, tok = load_encoder(tiny_bert_dir).eval(), load_tokenizer(tiny_bert_dir)
    cache, texts = FeatureCache(dtype=dtype), ["a good film", "a dull plot"]
    first = text_token_states(cache, encoder, tok, texts, 64, "tiny")
    expected = [s.clone() for s in first]
    for s in first:
        s.mul_(0)
    (first[0].requires_grad_() * 2).sum().backward()  # usable in autograd
    again = text_token_states(cache, encoder, tok, texts, 64, "tiny")
    assert cache.computed == 2
    for a, e in zip(again, expected):
        torch.testing.assert_close(a, e, atol=0, rtol=0)


def test_states_beyond_the_fp16_range_are_kept_in_float32_not_stored_as_inf(tiny_bert_dir, tmp_path):
    """An fp16 cache cast states beyond +-65504 to inf (silently: the projector's loss became NaN); such an input is
    stored in float32, in memory and on disk, and the others stay fp16."""
    encoder, tok = load_encoder(tiny_bert_dir).eval(), load_tokenizer(tiny_bert_dir)
    with torch.no_grad():  # a backbone whose last states reach ~1e5 (activation outliers)
        encoder.encoder.layer[-1].output.LayerNorm.weight.mul_(1e5)
    texts = ["a good film", "a dull plot that drags on"]
    exact = text_token_states(FeatureCache(dtype=torch.float32), encoder, tok, texts, 64, "big")
    assert max(float(s.abs().max()) for s in exact) > 65504
    got = text_token_states(FeatureCache(tmp_path), encoder, tok, texts, 64, "big")
    reopened = FeatureCache(tmp_path)
    from_disk = text_token_states(reopened, encoder, tok, texts, 64, "big")
    assert reopened.computed == 0
    for g, d, e in zip(got, from_disk, exact):
        assert torch.isfinite(g).all() and torch.isfinite(d).all()
        torch.testing.assert_close(g, e, atol=0, rtol=0)
        torch.testing.assert_close(d, e, atol=0, rtol=0)
    cache = FeatureCache()  # states within range are still stored in fp16
    text_token_states(cache, load_encoder(tiny_bert_dir).eval(), tok, texts, 64, "tiny")
    assert all(t.dtype == torch.float16 for entries in cache._entries.values() for t in entries.values())


def test_stored_states_are_the_caches_own_and_batch_as_their_float32_copies(tiny_bert_dir):
    """TwinTurbo held a float32 copy of every cached fp16 state (twice the cache's memory) for the whole training;
    it now reads the cache's own fp16 tensors, and its batches are the same float32 values."""
    encoder, tok = load_encoder(tiny_bert_dir).eval(), load_tokenizer(tiny_bert_dir)
    cache, texts = FeatureCache(), ["a good film", "a dull plot that drags on and on"]
    stored = text_token_states(cache, encoder, tok, texts, 64, "tiny", as_stored=True)
    assert all(s.dtype == torch.float16 for s in stored)
    again = text_token_states(cache, encoder, tok, texts, 64, "tiny", as_stored=True)
    assert all(a is b for a, b in zip(again, stored)) and cache.computed == 2  # no copy, no recomputation
    copies = text_token_states(cache, encoder, tok, texts, 64, "tiny")
    assert all(c.dtype == torch.float32 for c in copies)
    half = collate_token_states(list(TokenStateDataset(stored, [0, 1])))
    full = collate_token_states(list(TokenStateDataset(copies, [0, 1])))
    assert half["token_states"].dtype == torch.float32
    for key in full:
        assert torch.equal(half[key], full[key]), key
