"""Every tuner on the classification models users bring besides BERT: RoBERTa-style heads
(a module without a weight), DistilBERT (no ``encoder``), decoder classifiers (Llama, GPT-2:
a per-token ``score`` head; GPT-2's transformers ``Conv1D`` layers)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import RobertaConfig, RobertaForSequenceClassification

import hf_lowdata

IDS = torch.tensor([[5, 6, 7, 8, 9], [9, 10, 11, 1, 1]])
MASK = (IDS != 1).long()


def _roberta() -> torch.nn.Module:
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=37, num_labels=3, pad_token_id=1)
    return RobertaForSequenceClassification(config).eval()


def _perturb(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))


WEIGHT_TUNERS = {
    "ftp": lambda: hf_lowdata.FTPConfig(task_type="SEQ_CLS"),
    "ftp_lora": lambda: hf_lowdata.FTPConfig(task_type="SEQ_CLS", delta="lora", r=2),
    "mixup_blo": lambda: hf_lowdata.MixupBLOConfig(task_type="SEQ_CLS"),
    "sparse_expert": lambda: hf_lowdata.SparseExpertConfig(task_type="SEQ_CLS", num_experts=2),
}


@pytest.mark.parametrize("name", WEIGHT_TUNERS)
def test_merge_and_unload_on_a_roberta_head_without_weight(name):
    # the head is a modules_to_save copy of RobertaClassificationHead, a module with no .weight:
    # putting it back crashed in PEFT's default _replace_module (AttributeError)
    base = _roberta()
    with torch.no_grad():
        reference = base(input_ids=IDS, attention_mask=MASK).logits
    model = get_peft_model(base, WEIGHT_TUNERS[name]()).eval()
    _perturb(model)
    with torch.no_grad():
        adapted = model(input_ids=IDS, attention_mask=MASK).logits
        assert not torch.allclose(adapted, reference)
        merged = model.merge_and_unload()
        assert type(merged.classifier).__name__ == "RobertaClassificationHead"
        torch.testing.assert_close(merged(input_ids=IDS, attention_mask=MASK).logits, adapted, atol=1e-5, rtol=0)
    unloaded = get_peft_model(_roberta(), WEIGHT_TUNERS[name]()).unload()
    with torch.no_grad():
        torch.testing.assert_close(unloaded(input_ids=IDS, attention_mask=MASK).logits, reference)


def _decoder(kind: str) -> torch.nn.Module:
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForSequenceClassification(LlamaConfig(
            vocab_size=100, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, num_labels=3, pad_token_id=1)).eval()
    return GPT2ForSequenceClassification(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, num_labels=3,
                                                    pad_token_id=1)).eval()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_twin_turbo_on_decoder_classifiers_with_a_per_token_score_head(kind):
    # these models apply ``score`` to every token and then pick the last real token: TwinTurbo's
    # sequence logits must survive that (they were indexed as if per token: IndexError / wrong shape)
    config = hf_lowdata.TwinTurboConfig(task_type="SEQ_CLS", projector_dim=16, projector_heads=2)
    model = get_peft_model(_decoder(kind), config).eval()
    with torch.no_grad():
        logits = model(input_ids=IDS, attention_mask=MASK).logits
        assert logits.shape == (2, 3)
        # padding invariance: the second sentence alone, unpadded, gives the same logits
        alone = model(input_ids=IDS[1:, :3], attention_mask=MASK[1:, :3]).logits
    torch.testing.assert_close(alone, logits[1:], atol=1e-5, rtol=0)
    loss = model(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 2])).loss
    loss.backward()
    assert torch.isfinite(loss) and all(
        p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "twin_turbo_head" in n)


def _encoder(kind: str) -> torch.nn.Module:
    import transformers

    config_class, model_class = {
        "deberta": ("DebertaConfig", "DebertaForSequenceClassification"),
        "deberta-v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification"),
    }[kind]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=2, intermediate_size=37, num_labels=3,
                                                  max_position_embeddings=64)
    return getattr(transformers, model_class)(config).eval()


BLOCK_WEIGHT_TUNERS = {name: WEIGHT_TUNERS[name] for name in ("ftp", "mixup_blo")}


@pytest.mark.parametrize("kind", ["deberta", "deberta-v2", "llama"])
@pytest.mark.parametrize("name", BLOCK_WEIGHT_TUNERS)
def test_default_targets_cover_every_block_linear_of_deberta_and_llama(name, kind):
    """Every attention and MLP Linear of every block is adapted by default; the head never is."""
    base = _decoder(kind) if kind == "llama" else _encoder(kind)
    blocks = {n for n, m in base.named_modules()
              if isinstance(m, torch.nn.Linear) and ".layer" in n and not n.endswith(("classifier", "score"))}
    model = get_peft_model(base, BLOCK_WEIGHT_TUNERS[name]())
    adapted = {n.removeprefix("base_model.model.") for n, m in model.named_modules()
               if type(m).__module__.startswith("hf_lowdata.tuners") and isinstance(getattr(m, "base_layer", None),
                                                                                   torch.nn.Linear)}
    assert blocks and blocks <= adapted
    assert not any(n.endswith(("classifier", "score")) for n in adapted)


@pytest.mark.parametrize("name", BLOCK_WEIGHT_TUNERS)
def test_a_model_without_defaults_or_adaptable_layers_says_so(name):
    config = BLOCK_WEIGHT_TUNERS[name]()
    # only torch Conv1d layers: the message must not suggest layer names the model lacks
    with pytest.raises(ValueError, match=rf"{type(config).__name__} has no default target_modules for model type "
                                         r"'custom' \(defaults exist for .*'bert'.*'gpt2'.*\)\. This model has no "
                                         r"nn.Linear / transformers' Conv1D.* layer outside its head .*\(its weight "
                                         r"layers are nn.Conv1d\).*LoRA or TwinTurbo"):
        get_peft_model(torch.nn.Sequential(torch.nn.Conv1d(4, 4, 3)), config)


CONV1D_TUNERS = {**WEIGHT_TUNERS, "mixup_blo_lora": lambda: hf_lowdata.MixupBLOConfig(task_type="SEQ_CLS",
                                                                                      task_weight="lora", r=2)}


@pytest.mark.parametrize("name", CONV1D_TUNERS)
def test_gpt2_conv1d_layers_are_adapted_saved_and_merged(name, tmp_path):
    """GPT-2's weight layers are transformers' Conv1D (weight stored (in, out)): every one in the blocks is
    a default target, the adapter starts as the identity, reloads exactly, and merges into a plain GPT-2
    that saves and reloads as one."""
    from transformers import GPT2ForSequenceClassification
    from transformers.pytorch_utils import Conv1D

    base = _decoder("gpt2")
    blocks = {n for n, m in base.named_modules() if isinstance(m, Conv1D)}
    with torch.no_grad():
        reference = base(input_ids=IDS, attention_mask=MASK).logits
    model = get_peft_model(base, CONV1D_TUNERS[name]()).eval()
    adapted = {n.removeprefix("base_model.model.") for n, m in model.named_modules()
               if type(m).__module__.startswith("hf_lowdata.tuners") and isinstance(getattr(m, "base_layer", None),
                                                                                   Conv1D)}
    assert len(blocks) == 8 and adapted == blocks  # 2 blocks x (c_attn, attn.c_proj, c_fc, mlp.c_proj)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS, attention_mask=MASK).logits, reference, atol=1e-6, rtol=0)
    _perturb(model)
    with torch.no_grad():
        adapted_logits = model(input_ids=IDS, attention_mask=MASK).logits
    assert (adapted_logits - reference).abs().max() > 1e-3
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(_decoder("gpt2"), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=IDS, attention_mask=MASK).logits, adapted_logits, atol=0, rtol=0)
    merged = model.merge_and_unload()
    assert {type(m) for n, m in merged.named_modules() if n in blocks} == {Conv1D}
    merged.save_pretrained(tmp_path / "merged")  # safetensors refuses non-contiguous tensors
    reloaded = GPT2ForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=IDS, attention_mask=MASK).logits, adapted_logits,
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(reloaded(input_ids=IDS, attention_mask=MASK).logits, adapted_logits,
                                   atol=1e-5, rtol=0)


class _Twin(torch.nn.Module):
    """One weight layer, as an nn.Linear or as the transformers Conv1D with the same (transposed) weight."""

    def __init__(self, conv1d: bool) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        torch.manual_seed(0)
        linear = torch.nn.Linear(6, 5)
        if conv1d:
            self.proj = Conv1D(5, 6)
            with torch.no_grad():
                self.proj.weight.copy_(linear.weight.T)
                self.proj.bias.copy_(linear.bias)
        else:
            self.proj = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@pytest.mark.parametrize("config", [
    hf_lowdata.FTPConfig(target_modules=["proj"]),
    hf_lowdata.FTPConfig(target_modules=["proj"], delta="lora", r=2),
    hf_lowdata.MixupBLOConfig(target_modules=["proj"]),
    hf_lowdata.MixupBLOConfig(target_modules=["proj"], task_weight="lora", r=2),
], ids=["ftp", "ftp_lora", "mixup_blo", "mixup_blo_lora"])
def test_a_conv1d_layer_is_adapted_exactly_as_its_linear_twin(config):
    """The adapter's tensors are in nn.Linear's (out, in) layout for a Conv1D too, so the same values give the
    same outputs and gradients, FTP's per-output-row projection (its default norm) moves them identically,
    and the merged Conv1D weight is the merged Linear weight transposed."""
    from hf_lowdata.tuners.ftp import FTPOptimizer, ftp_param_groups

    x = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(2))
    models = [get_peft_model(_Twin(conv1d), copy.deepcopy(config)) for conv1d in (False, True)]
    params = [{n: p for n, p in m.named_parameters() if p.requires_grad} for m in models]
    assert {n: p.shape for n, p in params[0].items()} == {n: p.shape for n, p in params[1].items()}
    _perturb(models[0])
    with torch.no_grad():
        for name, p in params[0].items():
            params[1][name].copy_(p)
    outputs = [m(x) for m in models]
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-6, rtol=0)
    for out in outputs:
        out.pow(2).sum().backward()
    for name, p in params[0].items():
        torch.testing.assert_close(params[1][name].grad, p.grad, atol=1e-5, rtol=1e-5)
    if isinstance(config, hf_lowdata.FTPConfig):
        for model in models:
            FTPOptimizer(ftp_param_groups(model), lr=0.05).step()
        for name, p in params[0].items():
            torch.testing.assert_close(params[1][name], p, atol=1e-6, rtol=1e-6)
    merged = [m.merge_and_unload().proj.weight for m in models]
    torch.testing.assert_close(merged[1], merged[0].T, atol=1e-6, rtol=0)
    assert merged[1].is_contiguous()


ALL_TUNERS = {**WEIGHT_TUNERS, "twin_turbo": lambda: hf_lowdata.TwinTurboConfig(task_type="SEQ_CLS", projector_dim=16,
                                                                              projector_heads=2)}


@pytest.mark.parametrize("name", ALL_TUNERS)
def test_one_config_object_configures_models_of_other_architectures(name):
    """Defaults (target names, sizes) resolve into the adapter's own config, never the caller's object:
    reusing it on a Llama after a RoBERTa (heads 'score' vs 'classifier') must work, and each adapter
    keeps its own resolved config."""
    config = ALL_TUNERS[name]()
    first = get_peft_model(_roberta(), config)
    assert config.target_modules is None
    second = get_peft_model(_decoder("llama"), config)
    assert config.target_modules is None
    resolved = first.peft_config["default"].target_modules, second.peft_config["default"].target_modules
    assert resolved[0] is not None and resolved[1] is not None and resolved[0] != resolved[1]
    with torch.no_grad():
        assert second(input_ids=IDS, attention_mask=MASK).logits.shape == (2, 3)


@pytest.mark.parametrize("name", ["ftp", "mixup_blo"])
def test_the_trainer_trains_gpt2_conv1d_adapters_with_their_own_objectives(name, tmp_path):
    """LowDataTrainer runs FTP's projected optimizer and MixupBLO's bi-level objective on GPT-2's Conv1D
    layers; the trained adapter reloads to the same logits."""
    from hf_lowdata.budgets import Budget
    from hf_lowdata.training import LowDataTrainer, few_shot_training_args

    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(2, 100, (6,), generator=gen), "attention_mask": torch.ones(6, dtype=torch.long),
             "labels": torch.tensor(i % 3)} for i in range(15)]
    model = get_peft_model(_decoder("gpt2"), WEIGHT_TUNERS[name]())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "score" not in n}
    budget = Budget(learning_rate=1e-2, epochs=1, min_steps=3, max_steps=3, batch_size=4, warmup_ratio=0.0)
    args = few_shot_training_args(str(tmp_path / "run"), budget, len(data), seed=0, use_cpu=True)
    trainer = LowDataTrainer(model=model, args=args, train_dataset=data)
    assert type(trainer.objective).__name__.lower().startswith(name.replace("_", ""))
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=IDS, attention_mask=MASK).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(_decoder("gpt2"), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=IDS, attention_mask=MASK).logits, trained, atol=0, rtol=0)


def test_sparse_expert_leaves_the_multiple_choice_head_of_gpt2_double_heads_alone():
    from transformers import GPT2Config, GPT2DoubleHeadsModel

    model = GPT2DoubleHeadsModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2))
    targets = get_peft_model(model, hf_lowdata.SparseExpertConfig(num_experts=2)).peft_config["default"].target_modules
    assert len(targets) == 8 and not any("multiple_choice_head" in t for t in targets)


def test_ftp_as_a_drop_in_optimizer_projects_a_plain_conv1d_weight_per_output_unit():
    """Without an adapter FTP anchors each trainable weight at its start; a Conv1D weight is (in, out), so its
    rows (FTP's per-row radii) are its columns: the twins must train to the same (transposed) weights."""
    from hf_lowdata.tuners.ftp import FTPOptimizer, ftp_param_groups, projection_units
    from hf_lowdata.tuners.ftp.optimizer import as_rows, row_norms

    models = [_Twin(conv1d) for conv1d in (False, True)]
    assert [u.row_dim for u in projection_units(models[1]) if u.name == "proj.weight"] == [1]
    assert [u.row_dim for u in projection_units(models[0]) if u.name == "proj.weight"] == [0]
    c = torch.randn(5, 6)
    torch.testing.assert_close(row_norms(c.T, "mars", 1), row_norms(c, "mars"))
    torch.testing.assert_close(c.T * as_rows(torch.arange(5.0), c.T, 1), (c * as_rows(torch.arange(5.0), c)).T)
    optimizers = [FTPOptimizer(ftp_param_groups(m), lr=0.05) for m in models]
    gen = torch.Generator().manual_seed(3)
    for _ in range(6):
        x = torch.randn(4, 6, generator=gen)
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            (model(x) - 1.0).pow(2).sum().backward()
            optimizer.step()
    assert (models[0].proj.weight - _Twin(False).proj.weight).abs().max() > 1e-3  # it trained
    torch.testing.assert_close(models[1].proj.weight, models[0].proj.weight.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(models[1].proj.bias, models[0].proj.bias, atol=1e-5, rtol=1e-5)


def test_ftp_groups_for_gpt2_with_a_conv1d_in_modules_to_save_are_accepted_by_the_optimizer():
    """A Conv1D trained as a module to save has no pretrained anchor: its group must not carry row_dim 1 (the
    optimizer refused the groups ftp_param_groups built, and told the user to use ftp_param_groups)."""
    from peft import LoraConfig

    from hf_lowdata.tuners.ftp import FTPOptimizer, ftp_param_groups

    model = get_peft_model(_decoder("gpt2"), LoraConfig(task_type="SEQ_CLS", target_modules=["c_attn"],
                                                        modules_to_save=["mlp.c_proj"]))
    groups = ftp_param_groups(model)
    assert all(g.get("row_dim", 0) == 0 for g in groups if g["projection"] != "anchor")
    FTPOptimizer(groups, lr=1e-3)
