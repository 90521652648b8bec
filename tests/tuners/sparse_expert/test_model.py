"""SparseExpertModel: default targets leave the head alone, merged adapters refuse routing, configs are reusable."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.utils import ModulesToSaveWrapper
from transformers import BertConfig, BertForSequenceClassification

from hf_lowdata import SparseExpertConfig
from hf_lowdata.tuners.sparse_expert import SparseExpertLayer
from tests.conformance.models import ToyMLP

IDS = torch.tensor([[5, 6, 7, 8, 9], [9, 10, 11, 1, 1]])
MASK = (IDS != 1).long()
HEAD_PARTS = {"classifier", "pre_classifier", "score", "pooler"}


def _bert(hidden: int = 32, layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=64, num_labels=3)
    return BertForSequenceClassification(config).eval()


def _distilbert() -> torch.nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=37, num_labels=3)
    return DistilBertForSequenceClassification(config).eval()


def _llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    return LlamaForSequenceClassification(LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_labels=3, pad_token_id=1)).eval()


def _adapted(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, SparseExpertLayer)]


# ---- default targets ---------------------------------------------------------------------------
@pytest.mark.parametrize("build", [_distilbert, _llama, _bert], ids=["distilbert", "llama", "bert"])
@pytest.mark.parametrize("task_type", ["SEQ_CLS", None])
def test_default_targets_leave_pooler_and_head_alone(build, task_type):
    # DistilBERT has no 'encoder': its pre_classifier (which PEFT's modules_to_save=['classifier'] wraps
    # too) was a default target, and get_peft_model raised TypeError; without task_type the head was adapted
    model = get_peft_model(build(), SparseExpertConfig(task_type=task_type, num_experts=2))
    names = _adapted(model)
    assert len(names) == (14 if build is _llama else 12)  # 2 layers of 6 Linears (Llama: 7), none in the head
    assert not any(HEAD_PARTS & set(n.split(".")) for n in names)
    if task_type:
        head = "score" if build is _llama else "classifier"
        assert isinstance(model.get_base_model().get_submodule(head), ModulesToSaveWrapper)
    with torch.no_grad():
        assert model(input_ids=IDS, attention_mask=MASK).logits.shape == (2, 3)


# ---- merged adapters ---------------------------------------------------------------------------
def _merged_mlp():
    torch.manual_seed(0)
    model = get_peft_model(ToyMLP(), SparseExpertConfig(target_modules=["lin0", "lin1"], feature_dim=32,
                                                        num_experts=2))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "sparse_expert_delta" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.merge_adapter()
    return model


def test_routing_while_merged_is_refused_and_unmerge_restores_the_pretrained_weights():
    # set_expert_weights while merged made unmerge subtract the new weights' delta: the base weights drifted
    pretrained = {k: v.clone() for k, v in ToyMLP().state_dict().items()}
    model = _merged_mlp()
    tuner = model.base_model
    with pytest.raises(RuntimeError, match=r"unmerge_adapter\(\) first"):
        tuner.set_expert_weights([1.0, 0.0])
    with pytest.raises(RuntimeError, match="merged"):
        tuner.route(torch.randn(3, 32))
    with pytest.raises(RuntimeError, match="merged"):
        tuner.binarize_masks()
    model.unmerge_adapter()
    for name in ("lin0", "lin1"):
        layer = model.get_base_model().get_submodule(name)
        torch.testing.assert_close(layer.get_base_layer().weight, pretrained[f"{name}.weight"], atol=1e-6, rtol=0)
    tuner.set_expert_weights([1.0, 0.0])  # allowed again once unmerged


def test_frozen_backbone_is_refused_while_merged():
    # while merged, bypass() gave the merged weights instead of the frozen backbone (so route_support
    # weighted the experts differently depending on the merge state)
    model = _merged_mlp()
    with pytest.raises(RuntimeError, match="frozen backbone"), model.base_model.bypass():
        pass
    with pytest.raises(RuntimeError, match="merged"):
        model.base_model.task_weights(torch.tensor([0.5, 0.5]), model.get_base_model())
    model.unmerge_adapter()
    with model.base_model.bypass():
        pass


def test_route_support_is_refused_while_merged():
    model = get_peft_model(_bert(), SparseExpertConfig(task_type="SEQ_CLS", num_experts=2))
    batch = {"input_ids": IDS, "attention_mask": MASK}
    labels = torch.tensor([0, 1])
    before = model.base_model.route_support(batch, labels)
    model.merge_adapter()
    with pytest.raises(RuntimeError, match=r"unmerge_adapter\(\) first"):
        model.base_model.route_support(batch, labels)
    model.unmerge_adapter()
    torch.testing.assert_close(model.base_model.route_support(batch, labels), before)


# ---- config reuse ------------------------------------------------------------------------------
def test_a_config_object_builds_adapters_on_models_of_other_sizes(tmp_path):
    # the default targets (full names) and feature_dim of the first model were written into the user's
    # config: the second, deeper and wider model got only the first model's layers and a 32-d router
    config = SparseExpertConfig(task_type="SEQ_CLS", num_experts=2)
    small = get_peft_model(_bert(32, 2), config)
    big = get_peft_model(_bert(64, 3), config)
    assert config.target_modules is None and config.feature_dim is None
    assert (len(_adapted(small)), len(_adapted(big))) == (12, 18)
    assert (small.peft_config["default"].feature_dim, big.peft_config["default"].feature_dim) == (32, 64)
    big.base_model.route_support({"input_ids": IDS, "attention_mask": MASK}, torch.tensor([0, 1]))

    # the saved config names the resolved targets, and the adapter reloads exactly on the same architecture
    with torch.no_grad():
        for name, p in big.named_parameters():
            if "sparse_expert_delta" in name:
                p.add_(0.05)
        expected = big(input_ids=IDS, attention_mask=MASK).logits
    big.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["feature_dim"] == 64 and len(saved["target_modules"]) == 18
    loaded = PeftModel.from_pretrained(_bert(64, 3), tmp_path).eval()
    assert sorted(_adapted(loaded)) == sorted(_adapted(big))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS, attention_mask=MASK).logits, expected)


@pytest.mark.parametrize("task_type, head_class, head", [
    ("TOKEN_CLS", "BertForTokenClassification", "classifier"),
    ("QUESTION_ANS", "BertForQuestionAnswering", "qa_outputs"),
])
def test_token_classification_and_question_answering_models_train_and_reload_their_head(task_type, head_class,
                                                                                         head, tmp_path):
    """PEFT sets these wrappers' heads after the adapter is built; the adapter's own config must have them."""
    import transformers

    def build(seed):
        torch.manual_seed(seed)
        config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37, max_position_embeddings=64, num_labels=2)  # QA: start, end
        return getattr(transformers, head_class)(config).eval()

    model = get_peft_model(build(0), SparseExpertConfig(task_type=task_type, num_experts=2))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(f"{head}.modules_to_save" in n for n in trainable)
    with torch.no_grad():
        getattr(model.base_model.model, head).modules_to_save["default"].weight.add_(0.5)
    expected = model(input_ids=IDS, attention_mask=MASK)
    model.save_pretrained(tmp_path)
    assert head in json.loads((tmp_path / "adapter_config.json").read_text())["modules_to_save"]
    reloaded = PeftModel.from_pretrained(build(0), tmp_path).eval()  # the head comes from the adapter
    got = reloaded(input_ids=IDS, attention_mask=MASK)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])


def test_an_adapter_next_to_a_lora_adapter_adapts_the_layers_lora_wraps(tmp_path):
    from peft import LoraConfig

    plain = get_peft_model(_bert(), SparseExpertConfig(num_experts=2))
    plain_targets = {n for n, m in plain.named_modules() if isinstance(m, SparseExpertLayer)}
    plain.save_pretrained(tmp_path)
    # transformers' adapter API: a LoRA adapter first, then the saved SparseExpert adapter / a new one
    for load_saved in (True, False):
        model = _bert()
        model.add_adapter(LoraConfig(target_modules=["query", "value"]), adapter_name="lora")
        if load_saved:
            model.load_adapter(str(tmp_path), adapter_name="experts")
        else:
            model.add_adapter(SparseExpertConfig(num_experts=2), adapter_name="experts")
        model.set_adapter("experts")
        targets = {n for n, m in model.named_modules() if isinstance(m, SparseExpertLayer)}
        assert targets == {n.removeprefix("base_model.model.") for n in plain_targets}
        assert any(n.endswith("attention.self.query") for n in targets)  # a layer LoRA wraps too
        assert model(input_ids=IDS, attention_mask=MASK).logits.shape == (2, 3)
