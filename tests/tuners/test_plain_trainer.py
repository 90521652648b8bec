"""transformers' Trainer on an hf_lowdata adapter: it runs, and says once what it does not do and what to use."""

from __future__ import annotations

import warnings

import pytest
import torch

from hf_lowdata import FTPConfig, MixupBLOConfig, SparseExpertConfig, TwinTurboConfig
from hf_lowdata.tuners.base import PlainTrainerWarning

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = {
    "twin_turbo": lambda: TwinTurboConfig(task_type="SEQ_CLS", projector_dim=8, projector_heads=2),
    "mixup_blo": lambda: MixupBLOConfig(task_type="SEQ_CLS"),
    "sparse_expert": lambda: SparseExpertConfig(task_type="SEQ_CLS", num_experts=2, router_heads=2),
    "ftp": lambda: FTPConfig(task_type="SEQ_CLS", delta="lora", r=2),
}


def _model(config):
    from peft import get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=32,
                                                    max_position_embeddings=32))
    return get_peft_model(base, config)


def _dataset():
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    return Dataset.from_list([{"input_ids": torch.randint(5, 50, (6,), generator=g).tolist(), "attention_mask": [1] * 6,
                               "labels": i % 2} for i in range(8)])


def _train(trainer_cls, model, tmp_path, **kwargs) -> list[warnings.WarningMessage]:
    from transformers import TrainingArguments

    args = TrainingArguments(str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True,
                             save_strategy="no", logging_strategy="no", disable_tqdm=True)
    trainer = trainer_cls(model=model, args=args, train_dataset=_dataset(), **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    return [w for w in caught if issubclass(w.category, PlainTrainerWarning)]


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_plain_trainer_trains_and_warns_once_pointing_to_low_data_trainer(method, tmp_path):
    from transformers import Trainer

    model = _model(CONFIGS[method]())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    caught = _train(Trainer, model, tmp_path)
    assert len(caught) == 1, [str(w.message) for w in caught]  # once, not at every step
    message = str(caught[0].message)
    assert "Trainer is training a" in message and "hf_lowdata.LowDataTrainer" in message
    assert caught[0].filename == __file__  # points at the trainer.train() line, not into the libraries
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def test_no_warning_where_the_plain_trainer_does_what_the_method_asks(tmp_path):
    from transformers import Trainer

    from hf_lowdata import LowDataTrainer
    from hf_lowdata.tuners.ftp import FTPOptimizer, ftp_param_groups

    assert _train(LowDataTrainer, _model(CONFIGS["ftp"]()), tmp_path / "low") == []
    model = _model(CONFIGS["ftp"]())
    optimizer = FTPOptimizer(ftp_param_groups(model), lr=1e-3)
    assert _train(Trainer, model, tmp_path / "ftp_opt", optimizers=(optimizer, None)) == []
    ce_only = TwinTurboConfig(task_type="SEQ_CLS", projector_dim=8, projector_heads=2, marginal_weight=0.0,
                              adversarial_weight=0.0, latent_weight=0.0)
    assert _train(Trainer, _model(ce_only), tmp_path / "ce") == []


def test_the_warning_class_is_exported_where_the_readme_names_it():
    import hf_lowdata

    assert hf_lowdata.PlainTrainerWarning is PlainTrainerWarning and "PlainTrainerWarning" in hf_lowdata.__all__
