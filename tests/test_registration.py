"""PEFT registration: the enum extension, idempotency, fresh processes, JSON round trips."""

from __future__ import annotations

import enum
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hf_lowdata.registration import METHOD_PREFIXES, extend_str_enum
from tests.helpers import REPO_ROOT, run_python

ENUM_CHECK = r"""
import enum, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("reg", sys.argv[1])
reg = importlib.util.module_from_spec(spec); spec.loader.exec_module(reg)
class T(str, enum.Enum):
    LORA = "LORA"
m = reg.extend_str_enum(T, "TWIN_TURBO")
assert reg.extend_str_enum(T, "TWIN_TURBO") is m
assert T("TWIN_TURBO") is m and T["TWIN_TURBO"] is m and T.TWIN_TURBO is m and isinstance(m, T)
assert m == "TWIN_TURBO" and m.value == "TWIN_TURBO" and m.name == "TWIN_TURBO"
assert list(T.__members__) == ["LORA", "TWIN_TURBO"] and "TWIN_TURBO" in list(T)
assert json.loads(json.dumps({"t": m}))["t"] == "TWIN_TURBO"
print("ok", sys.version_info[:2])
"""


def _interpreters() -> list[str]:
    """This interpreter plus one working CPython of each of 3.10-3.13 found on the machine."""
    import sys

    by_version = {f"{sys.version_info[0]}.{sys.version_info[1]}": sys.executable}
    candidates = [shutil.which(f"python3.{minor}") for minor in (10, 11, 12, 13)]
    candidates += [str(p) for p in sorted(Path("/root/.pyenv/versions").glob("3.1[0-3].*/bin/python"))]
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            continue
        version = out.stdout.strip()
        if out.returncode == 0 and version in ("3.10", "3.11", "3.12", "3.13"):
            by_version.setdefault(version, exe)
    return [by_version[v] for v in sorted(by_version)]


@pytest.mark.parametrize("python", _interpreters())
def test_enum_extension_on_each_python(python):
    proc = subprocess.run(
        [python, "-c", ENUM_CHECK, str(REPO_ROOT / "hf_lowdata" / "registration.py")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_extend_rejects_conflicting_value():
    class T(str, enum.Enum):
        A = "A"

    with pytest.raises(ValueError, match="already has a member"):
        extend_str_enum(T, "B", value="A")


def test_peft_types_exist_after_import():
    from peft.utils import PeftType

    import hf_lowdata  # noqa: F401

    for name in METHOD_PREFIXES:
        member = PeftType(name.upper())
        assert member is getattr(PeftType, name.upper())
        assert member.value == name.upper()


def test_prefixes_are_unique_and_not_nested():
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    import hf_lowdata  # noqa: F401

    others = [p for t, p in PEFT_TYPE_TO_PREFIX_MAPPING.items() if t.value.lower() not in METHOD_PREFIXES]
    for name, prefix in METHOD_PREFIXES.items():
        assert prefix.startswith(name)  # transformers' load_adapter looks for peft_type.lower() in keys
        for other in [*others, *(p for n, p in METHOD_PREFIXES.items() if n != name)]:
            assert not prefix.startswith(other) and not other.startswith(prefix), (prefix, other)


def test_import_twice_and_reload_is_idempotent():
    import importlib

    import hf_lowdata
    import hf_lowdata.registration as registration

    importlib.reload(registration)
    importlib.reload(hf_lowdata)
    registration.ensure_peft_types()
    from peft.utils import PeftType

    assert sum(1 for m in PeftType if m.value == "FTP") == 1


def test_fresh_process_resolves_types_and_round_trips_config(tmp_path):
    code = f"""
import json, hf_lowdata, hf_lowdata
from peft import PeftConfig
from peft.utils import PeftType
assert PeftType("FTP") is PeftType.FTP
cfg = PeftConfig(peft_type=PeftType.FTP, base_model_name_or_path="x")
cfg.save_pretrained({str(tmp_path)!r})
raw = json.load(open({str(tmp_path / 'adapter_config.json')!r}))
assert raw["peft_type"] == "FTP", raw
print("ok")
"""
    assert run_python(code).stdout.strip().endswith("ok")
    # and a second fresh process reads the file written by the first
    code2 = f"""
import json, hf_lowdata
from peft.utils import PeftType
raw = json.load(open({str(tmp_path / 'adapter_config.json')!r}))
assert PeftType(raw["peft_type"]) is PeftType.FTP
print("ok")
"""
    assert run_python(code2).stdout.strip().endswith("ok")


def test_register_method_validates_prefix():
    from hf_lowdata.registration import register_method

    class Model:
        prefix = "wrong_"

    with pytest.raises(ValueError, match="prefix must be 'ftp_'"):
        register_method("ftp", object, Model)
    with pytest.raises(ValueError, match="Unknown hf_lowdata method"):
        register_method("nope", object, Model)


def test_config_json_is_plain_string():
    from peft import PeftConfig
    from peft.utils import PeftType

    import hf_lowdata  # noqa: F401

    data = PeftConfig(peft_type=PeftType.MIXUP_BLO).to_dict()
    assert json.loads(json.dumps(data))["peft_type"] == "MIXUP_BLO"


def _tiny_bert_classifier():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config)


def test_save_pretrained_card_says_to_install_and_import_hf_lowdata(tmp_path):
    """PEFT's own card (``save_pretrained``, ``push_to_hub``) tells a reader of an hf_lowdata adapter what its
    loaders cannot: without ``import hf_lowdata`` they stop with a bare ``KeyError: 'FTP'``."""
    from huggingface_hub import ModelCard
    from peft import LoraConfig, get_peft_model

    from hf_lowdata import FTPConfig

    model = get_peft_model(_tiny_bert_classifier(), FTPConfig(task_type="SEQ_CLS", delta="lora", r=2))
    model.save_pretrained(tmp_path / "ftp")
    model.save_pretrained(tmp_path / "ftp")  # saving again over the folder keeps one section
    card = ModelCard.load(tmp_path / "ftp" / "README.md")
    assert card.text.count("## Loading this adapter") == 1
    assert "pip install hf-lowdata" in card.text and "KeyError: 'FTP'" in card.text
    lines = card.text.splitlines()
    first_import = next(i for i, line in enumerate(lines) if line.startswith("import hf_lowdata"))
    assert first_import < next(i for i, line in enumerate(lines) if "PeftModel.from_pretrained(" in line)
    assert {"hf_lowdata", "ftp"} <= set(card.data.tags) and card.data.library_name == "peft"

    lora = get_peft_model(_tiny_bert_classifier(), LoraConfig(task_type="SEQ_CLS", target_modules=["query"]))
    lora.save_pretrained(tmp_path / "lora")
    lora_card = ModelCard.load(tmp_path / "lora" / "README.md")
    assert "hf_lowdata" not in lora_card.text and "hf_lowdata" not in (lora_card.data.tags or [])


def test_card_note_keeps_a_card_that_already_says_it(tmp_path):
    """A card that already says to import hf_lowdata (the one ``hf-lowdata train`` writes) gets no second note."""
    from peft import get_peft_model

    from hf_lowdata import TwinTurboConfig

    text = "---\nlibrary_name: peft\n---\n\n# My adapter\n\n```python\nimport hf_lowdata\n```\n"
    (tmp_path / "README.md").write_text(text)
    model = get_peft_model(_tiny_bert_classifier(), TwinTurboConfig(projector_dim=8, projector_heads=2))
    model.save_pretrained(tmp_path)
    saved = (tmp_path / "README.md").read_text()
    assert "## Loading this adapter" not in saved and "# My adapter" in saved and "hf_lowdata" in saved
