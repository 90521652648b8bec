"""The TwinTurbo layer and tuner: padding never matters, only projector + head are saved, clear errors."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from hf_lowdata import TwinTurboConfig
from hf_lowdata.models import load_encoder, load_for_classification
from hf_lowdata.tuners.twin_turbo import TokenProjector, TokenTap, twin_turbo_layer
from hf_lowdata.tuners.twin_turbo.config import head_dims_from_weights
from tests.tuners.twin_turbo.helpers import small_config, tiny_model, tokenizer

SHORT = "a truly good film"
LONG = "this is a much longer sentence with many more words in it, so the short one gets padded a lot"


@pytest.mark.parametrize("aggregation", ["attention", "cls", "mean"])
@pytest.mark.parametrize("head", ["categorical", "binary", "infonce"])
def test_padding_does_not_change_the_logits(tiny_bert_dir, aggregation, head):
    model = tiny_model(tiny_bert_dir, aggregation=aggregation, head=head).eval()
    tok = tokenizer(tiny_bert_dir)
    alone = model(**tok([SHORT], return_tensors="pt")).logits
    padded = model(**tok([SHORT, LONG], padding=True, return_tensors="pt")).logits[0]
    right = model(**tok([SHORT], padding="max_length", max_length=40, return_tensors="pt")).logits[0]
    torch.testing.assert_close(padded, alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(right, alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("aggregation", ["attention", "mean", "cls"])
def test_padded_positions_never_reach_attention_or_pooling(aggregation):
    torch.manual_seed(0)
    projector = TokenProjector(24, small_config(aggregation=aggregation)).eval()
    tokens = torch.randn(3, 7, 24)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.bool)
    garbage = tokens.clone()
    garbage[~mask] = 1e4 * torch.randn(int((~mask).sum()), 24)
    torch.testing.assert_close(projector(garbage, mask), projector(tokens, mask), atol=0, rtol=0)
    with pytest.raises(ValueError, match="no real token"):
        projector(tokens, torch.zeros(3, 7, dtype=torch.bool))


@pytest.mark.parametrize("aggregation", ["attention", "mean", "cls"])
def test_left_padding_gives_the_same_output_as_right_padding(aggregation):
    """Decoder tokenizers pad on the left: "cls" took position 0, a padding token, there."""
    torch.manual_seed(0)
    projector = TokenProjector(24, small_config(aggregation=aggregation)).eval()
    real = torch.randn(2, 4, 24)
    right, left = torch.randn(2, 7, 24), torch.randn(2, 7, 24)
    right[:, :4], left[:, 3:] = real, real
    right_mask = torch.tensor([[1] * 4 + [0] * 3] * 2, dtype=torch.bool)
    torch.testing.assert_close(projector(left, right_mask.flip(1)), projector(right, right_mask), atol=1e-5, rtol=0)


def test_logits_come_from_projector_and_head_and_disable_gives_the_base_head(tiny_bert_dir):
    tok = tokenizer(tiny_bert_dir)
    inputs = tok([SHORT, LONG], padding=True, return_tensors="pt")
    base = load_for_classification(tiny_bert_dir, 2, ["neg", "pos"], seed=0).eval()
    expected_base = base(**inputs).logits
    model = get_peft_model(base, small_config()).eval()
    layer = twin_turbo_layer(model)
    states = load_encoder(tiny_bert_dir)(**inputs).last_hidden_state
    by_hand = layer.classify(layer.encode(states, inputs["attention_mask"].bool()))
    torch.testing.assert_close(model(**inputs).logits, by_hand, atol=1e-5, rtol=0)
    with model.disable_adapter():
        torch.testing.assert_close(model(**inputs).logits, expected_base, atol=1e-6, rtol=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("twin_turbo_projector" in n or "twin_turbo_head" in n for n in trainable)


def test_adapter_saves_only_projector_and_head_and_reloads(tiny_bert_dir, tmp_path):
    tok = tokenizer(tiny_bert_dir)
    inputs = tok([SHORT, LONG], padding=True, return_tensors="pt")
    model = tiny_model(tiny_bert_dir, head="infonce").eval()
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert keys and all(".twin_turbo_projector." in k or ".twin_turbo_head." in k for k in keys)
    assert not any("discriminator" in k or "critic" in k for k in keys)
    loaded = PeftModel.from_pretrained(load_for_classification(tiny_bert_dir, 2, seed=1), tmp_path).eval()
    torch.testing.assert_close(loaded(**inputs).logits, expected, atol=1e-6, rtol=0)


def test_a_saved_image_adapter_loads_on_the_pretrained_base_without_num_labels(tmp_path):
    """The head was rebuilt at the fresh base's head size (here 10 classes, ImageNet's 1,000 for Lite0):
    loading failed on the saved 3-class weights unless the user passed num_labels."""
    from peft import AutoPeftModel
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    torch.manual_seed(0)
    EfficientNetForImageClassification(EfficientNetConfig(
        width_coefficient=0.1, depth_coefficient=0.1, image_size=32, hidden_dim=128, num_labels=10,
    )).save_pretrained(tmp_path / "base")
    names = {0: "a", 1: "b", 2: "c"}
    base = EfficientNetForImageClassification.from_pretrained(
        tmp_path / "base", num_labels=3, id2label=names, label2id={v: k for k, v in names.items()},
        ignore_mismatched_sizes=True)
    model = get_peft_model(base, small_config(task_type=None)).eval()
    assert (model.peft_config["default"].num_labels, model.peft_config["default"].token_dim) == (3, 128)
    pixels, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    expected = model(pixel_values=pixels, labels=labels)
    model.save_pretrained(tmp_path / "adapter")
    fresh = lambda: EfficientNetForImageClassification.from_pretrained(tmp_path / "base")  # noqa: E731
    for loaded in (AutoPeftModel.from_pretrained(tmp_path / "adapter"),
                   PeftModel.from_pretrained(fresh(), tmp_path / "adapter")):
        out = loaded.eval()(pixel_values=pixels, labels=labels)  # the loss reads the 3 logits, not 10
        torch.testing.assert_close(out.logits, expected.logits, atol=0, rtol=0)
        torch.testing.assert_close(out.loss, expected.loss, atol=0, rtol=0)
        assert loaded.config.num_labels == 3
    restored = loaded.unload()
    assert restored.config.num_labels == 10 and restored(pixel_values=pixels).logits.shape == (2, 10)


def test_a_saved_text_adapter_with_three_labels_loads_without_num_labels(tiny_bert_dir, tmp_path):
    """The text path only worked for two classes (the default head size of a fresh base)."""
    from peft import AutoPeftModelForSequenceClassification

    model = get_peft_model(load_for_classification(tiny_bert_dir, 3, seed=0), small_config()).eval()
    inputs = tokenizer(tiny_bert_dir)([SHORT, LONG], padding=True, return_tensors="pt")
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    loaded = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(**inputs).logits, expected, atol=0, rtol=0)
    assert torch.isfinite(loaded(**inputs, labels=torch.tensor([2, 0])).loss)  # BERT's loss reads model.num_labels
    with loaded.disable_adapter():  # the base's 2-label head answers, and its loss must work too
        out = loaded(**inputs, labels=torch.tensor([1, 0]))
        assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)
    assert loaded(**inputs, labels=torch.tensor([2, 0])).logits.shape == (2, 3)  # the adapter's head again
    base = loaded.unload()
    assert base.num_labels == base.config.num_labels == 2  # the fresh base's own head again


@pytest.mark.parametrize("head", ["categorical", "infonce"])
def test_an_adapter_saved_without_head_sizes_reads_them_from_its_weights(head, tiny_bert_dir, tmp_path):
    """Adapters saved before num_labels/token_dim were recorded have null there; they load anyway."""
    import json

    from peft import AutoPeftModelForSequenceClassification

    model = get_peft_model(load_for_classification(tiny_bert_dir, 3, seed=0), small_config(head=head)).eval()
    inputs = tokenizer(tiny_bert_dir)([SHORT, LONG], padding=True, return_tensors="pt")
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "adapter_config.json"
    old = {**json.loads(config_file.read_text()), "num_labels": None, "token_dim": None}
    config_file.write_text(json.dumps(old))
    assert TwinTurboConfig.from_pretrained(str(tmp_path)).num_labels == 3
    loaded = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(**inputs).logits, expected, atol=0, rtol=0)
    assert torch.isfinite(loaded(**inputs, labels=torch.tensor([2, 0])).loss)
    damaged = tmp_path / "adapter_model.safetensors"
    damaged.write_bytes(b"not a safetensors file")
    assert head_dims_from_weights(damaged) == {}  # left to the weight loading, which names the file


def test_switching_between_adapters_of_different_label_counts_keeps_the_loss_working(tiny_bert_dir):
    """A classifier's loss uses config.num_labels: after set_adapter it must be the active adapter's."""
    model = get_peft_model(load_for_classification(tiny_bert_dir, 2, seed=0), small_config(num_labels=3))
    model.add_adapter("five", small_config(num_labels=5))
    inputs = tokenizer(tiny_bert_dir)([SHORT, LONG], padding=True, return_tensors="pt")
    for name, labels in (("five", 5), ("default", 3), ("five", 5)):
        model.set_adapter(name)
        out = model(**inputs, labels=torch.tensor([labels - 1, 0]))
        assert out.logits.shape == (2, labels) and model.config.num_labels == labels and torch.isfinite(out.loss)
    with model.disable_adapter():  # switching while disabled: the base's 2-label head still answers
        model.set_adapter("default")
        assert torch.isfinite(model(**inputs, labels=torch.tensor([1, 0])).loss)
    model.set_adapter("five")
    model.delete_adapter("five")  # PEFT makes "default" active without set_adapter
    out = model(**inputs, labels=torch.tensor([2, 0]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)


def test_one_config_object_configures_models_with_other_label_counts(tiny_bert_dir):
    """The saved head size goes into the adapter's own copy of the config, not into the caller's object."""
    config = small_config()
    three = get_peft_model(load_for_classification(tiny_bert_dir, 3, seed=0), config)
    five = get_peft_model(load_for_classification(tiny_bert_dir, 5, seed=0), config)
    inputs = tokenizer(tiny_bert_dir)([SHORT, LONG], padding=True, return_tensors="pt")
    assert three(**inputs).logits.shape == (2, 3) and five(**inputs).logits.shape == (2, 5)
    assert config.num_labels is None and five.peft_config["default"].num_labels == 5


def test_image_backbone_feature_map_gives_the_tokens():
    from hf_lowdata.vision import load_efficientnet_lite0

    model = get_peft_model(load_efficientnet_lite0(num_labels=3, seed=0), small_config(task_type=None)).eval()
    pixels = torch.randn(2, 3, 64, 64)
    assert model(pixel_values=pixels).logits.shape == (2, 3)
    layer = twin_turbo_layer(model)
    model.base_model.model.efficientnet(pixels[:1])  # the backbone alone: its tap keeps the tokens
    assert layer.token_tap._value[0].shape == (1, 4, 1280)  # a 2x2 feature map = 4 tokens of width 1280


def test_unload_restores_the_base_model_and_removes_the_hook(tiny_bert_dir):
    tok = tokenizer(tiny_bert_dir)
    inputs = tok([SHORT], return_tensors="pt")
    base = load_for_classification(tiny_bert_dir, 2, seed=0).eval()
    expected = base(**inputs).logits
    restored = get_peft_model(base, small_config()).unload()
    torch.testing.assert_close(restored(**inputs).logits, expected, atol=0, rtol=0)
    assert not any(isinstance(h, TokenTap) for m in restored.modules() for h in m._forward_hooks.values())


def test_unload_gives_back_a_head_without_a_weight_of_its_own():
    """RoBERTa's / ELECTRA's classifier is a small module with no .weight: PEFT's default module replacement
    failed on it, so unload(), the route the merge refusal points to, raised AttributeError."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    base = RobertaForSequenceClassification(RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        pad_token_id=1, max_position_embeddings=40)).eval()
    inputs = {"input_ids": torch.tensor([[0, 5, 6, 7, 2]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    expected = base(**inputs).logits
    head = base.classifier
    restored = get_peft_model(base, small_config()).unload()
    assert restored.classifier is head
    torch.testing.assert_close(restored(**inputs).logits, expected, atol=0, rtol=0)


def test_merge_is_refused_clearly(tiny_bert_dir):
    model = tiny_model(tiny_bert_dir)
    for merge in (model.merge_and_unload, model.base_model.merge_adapter):
        with pytest.raises(NotImplementedError, match="cannot be merged.*unload"):
            merge()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(aggregation="max"), "aggregation must be one of"),
        (dict(head="softmax"), "head must be one of"),
        (dict(projector_dim=30, projector_heads=4), "divisible by projector_heads"),
        (dict(marginal_weight=-1.0), "marginal_weight must be >= 0"),
        (dict(head_temperature=0.0), "head_temperature must be > 0"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(num_labels=1), "at least 2"),
        (dict(projector_layers=2.0), "projector_layers must be a non-negative integer, got 2.0"),
        (dict(projector_layers=-1), "projector_layers must be a non-negative integer"),
        (dict(projector_dim=128.5), "projector_dim must be a positive integer"),
        (dict(num_labels=3.0), "num_labels must be a positive integer or None"),
        (dict(task_type="TOKEN_CLS"), "task_type must be 'SEQ_CLS' or None, got 'TOKEN_CLS'"),
        (dict(task_type="QUESTION_ANS"), "task_type must be 'SEQ_CLS' or None"),
    ],
)
def test_bad_config_values_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TwinTurboConfig(**kwargs)


def test_bad_targets_are_explained(tiny_bert_dir):
    with pytest.raises(ValueError, match="not found in the base model|Target modules"):
        tiny_model(tiny_bert_dir, target_modules=["nonexistent"])
    with pytest.raises(ValueError, match="no module named classifier or score"):
        get_peft_model(load_encoder(tiny_bert_dir), small_config(task_type=None))
    with pytest.raises(ValueError, match="could not find it.*backbone_module"):
        tiny_model(tiny_bert_dir, backbone_module="encoder.nothing")
    with pytest.raises(ValueError, match="target exactly one module|Target exactly one"):
        tiny_model(tiny_bert_dir, target_modules=["classifier", "pooler.dense"])


def test_per_token_models_and_a_head_another_adapter_owns_are_refused(tiny_bert_dir, tmp_path):
    """A token-classification head would get one sequence logit copied to every token: refused, not wrong."""
    from peft import LoraConfig
    from transformers import BertForTokenClassification

    with pytest.raises(ValueError, match="BertForTokenClassification predicts per token"):
        get_peft_model(BertForTokenClassification.from_pretrained(tiny_bert_dir, num_labels=3),
                       small_config(task_type=None))
    lora = get_peft_model(load_for_classification(tiny_bert_dir, 2, ["neg", "pos"], seed=0),
                          LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]))
    lora.save_pretrained(tmp_path)  # its adapter saves the classifier whole (modules_to_save)
    base = load_for_classification(tiny_bert_dir, 2, ["neg", "pos"], seed=0)
    base.load_adapter(str(tmp_path), adapter_name="lora")
    with pytest.raises(ValueError, match="'classifier' is already trained and saved whole by another adapter"):
        base.add_adapter(small_config(task_type=None), adapter_name="twin")


def test_one_active_adapter_and_head_needs_the_backbone(tiny_bert_dir):
    tok = tokenizer(tiny_bert_dir)
    inputs = tok([SHORT], return_tensors="pt")
    model = tiny_model(tiny_bert_dir)
    model.add_adapter("other", small_config())
    model.base_model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match="only one can be active"):
        model(**inputs)
    model.base_model.set_adapter("default")
    with pytest.raises(RuntimeError, match="call the whole model"):
        model.base_model.model.classifier(torch.randn(1, 32))


def test_threads_sharing_one_model_each_get_their_own_logits(tiny_bert_dir):
    """The token states pass from backbone to head per thread: a second request's backbone running
    between a first request's backbone and head must not hand the first one its states."""
    import threading

    tok = tokenizer(tiny_bert_dir)
    first, second = (tok(texts, padding=True, return_tensors="pt") for texts in ([SHORT, LONG], [LONG, SHORT]))
    model = tiny_model(tiny_bert_dir).eval()
    with torch.no_grad():
        expected = model(**first).logits
    at_head, second_done = threading.Event(), threading.Event()

    def pause_first_call_at_the_head(module, args):
        if threading.current_thread().name == "first":
            at_head.set()
            second_done.wait(10)

    hook = model.base_model.model.classifier.register_forward_pre_hook(pause_first_call_at_the_head)
    got = {}

    def first_call():
        with torch.no_grad():
            got["logits"] = model(**first).logits

    def second_call():  # another request's backbone pass (its head has not run yet)
        at_head.wait(10)
        with torch.no_grad():
            model.base_model.model.bert(**second)
        second_done.set()

    threads = [threading.Thread(target=first_call, name="first"), threading.Thread(target=second_call)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    hook.remove()
    assert at_head.is_set() and second_done.is_set()
    torch.testing.assert_close(got["logits"], expected, atol=1e-6, rtol=0)


def test_copies_and_pickles_carry_no_token_states(tiny_bert_dir):
    import copy
    import pickle

    tok = tokenizer(tiny_bert_dir)
    inputs = tok([SHORT, LONG], padding=True, return_tensors="pt")
    model = tiny_model(tiny_bert_dir).eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        model.base_model.model.bert(**inputs)  # leaves this pass's states in the tap
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            with pytest.raises(RuntimeError, match="call the whole model"):
                clone.base_model.model.classifier(torch.randn(2, 32))
            torch.testing.assert_close(clone(**inputs).logits, expected, atol=0, rtol=0)


def test_a_head_named_classification_head_is_found_without_target_modules():
    """BART, mBART, PLBart and T5 classifiers call their head ``classification_head``: get_peft_model (and the
    twin_turbo method, which sets no target_modules) failed with 'no module named classifier or score'."""
    from transformers import BartConfig, BartForSequenceClassification

    torch.manual_seed(0)
    bart = BartForSequenceClassification(BartConfig(
        vocab_size=50, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64, num_labels=3,
        pad_token_id=1, eos_token_id=2))
    model = get_peft_model(bart, small_config()).eval()
    layer = model.base_model.model.classification_head
    assert layer.twin_turbo_head["default"].num_labels == 3 and layer.twin_turbo_projector["default"].input.in_features == 32
    ids = torch.tensor([[5, 6, 7, 2, 1, 1], [5, 8, 9, 10, 11, 2]])
    mask = (ids != 1).long()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4]).logits
        with model.disable_adapter():
            base = model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (2, 3) and not torch.allclose(logits, base)
    torch.testing.assert_close(alone, logits[:1], atol=1e-5, rtol=0)
    assert model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2])).loss.isfinite()
