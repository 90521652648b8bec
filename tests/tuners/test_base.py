"""The shared weight-adapter tuner: a classifier's head that would be neither trained nor saved is warned about."""

from __future__ import annotations

import warnings

import pytest
from peft import PeftModel, TaskType, get_peft_model

from hf_lowdata import FTPConfig, MixupBLOConfig
from hf_lowdata.models import load_for_classification

HEAD_WARNING = "neither trained nor saved"


def _warnings(make) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    found = [w for w in caught if HEAD_WARNING in str(w.message)]
    assert all(w.filename == __file__ for w in found), [w.filename for w in found]  # points at the caller's line
    return [str(w.message) for w in found]


@pytest.mark.parametrize("config_cls", [FTPConfig, MixupBLOConfig])
def test_a_head_left_frozen_and_unsaved_is_warned_about(tiny_bert_dir, tmp_path, config_cls):
    def base():
        return load_for_classification(tiny_bert_dir, 3, seed=0)

    [message] = _warnings(lambda: get_peft_model(base(), config_cls()))
    assert "modules_to_save=['classifier']" in message and "task_type='SEQ_CLS'" in message
    # the documented ways out: PEFT trains and saves the head, or the user keeps it on purpose
    assert not _warnings(lambda: get_peft_model(base(), config_cls(task_type=TaskType.SEQ_CLS)))
    assert not _warnings(lambda: get_peft_model(base(), config_cls(modules_to_save=["classifier"])))
    assert not _warnings(lambda: get_peft_model(base(), config_cls(modules_to_save=[])))
    # still frozen and unsaved: another module saved, or a task type that does not own the head
    assert _warnings(lambda: get_peft_model(base(), config_cls(modules_to_save=["LayerNorm"])))
    assert _warnings(lambda: get_peft_model(base(), config_cls(task_type=TaskType.FEATURE_EXTRACTION)))
    trained = get_peft_model(base(), config_cls(task_type=TaskType.SEQ_CLS))
    trained.save_pretrained(tmp_path)
    assert not _warnings(lambda: PeftModel.from_pretrained(base(), tmp_path))  # loading for inference: no training


def test_sparse_expert_classifies_with_prototypes_and_does_not_warn(tiny_bert_dir):
    from hf_lowdata import SparseExpertConfig

    base = load_for_classification(tiny_bert_dir, 3, seed=0)
    assert not _warnings(lambda: get_peft_model(base, SparseExpertConfig(target_modules=["query", "value"])))
