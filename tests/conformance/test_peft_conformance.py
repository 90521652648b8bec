"""PEFT's generic checks, run on every hf_lowdata method (rows in cases.py) and LoRA as reference.

Modelled on the list in shared/specs/peft-integration.md: construction, save/load (same process,
fresh process through PeftModel / AutoPeftModelForSequenceClassification / transformers'
load_adapter, low_cpu_mem_usage), merging, dtypes, enable/disable, training touches only adapter
parameters, several adapters, requires_grad after loading, direct injection.
"""

from __future__ import annotations

import copy
import json
import re
import warnings

import pytest
import torch
from peft import (
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from tests.conformance.cases import CASES, Case
from tests.conformance.models import KINDS, build_base, cast_inputs, logits, make_inputs
from tests.helpers import REPO_ROOT, run_python

PARAMS = [pytest.param(case, kind, id=f"{case.name}-{kind}", marks=[pytest.mark.slow] if kind == "minilm" else [])
          for case in CASES for kind in KINDS if kind in case.kinds]
ATOL = 1e-5


@pytest.fixture(scope="module")
def folders(tiny_bert_dir, minilm_dir):
    return {"tiny_bert": str(tiny_bert_dir), "minilm": str(minilm_dir)}


@pytest.fixture(scope="module")
def bases(folders):
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = build_base(kind, folders)
        return copy.deepcopy(cache[kind])

    return get


def _perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Move every adapter parameter away from its (often identity) initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.dtype))


def _peft(case: Case, kind: str, bases, perturb: bool = True):
    model = get_peft_model(bases(kind), case.make_config(kind))
    if perturb:
        _perturb(model)
    return model.eval()


def _adapter_keys(model) -> set[str]:
    return set(get_peft_model_state_dict(model))


@pytest.mark.parametrize("case, kind", PARAMS)
def test_construction(case, kind, bases, folders):
    base = bases(kind)
    inputs = make_inputs(kind, folders)
    expected = logits(base, inputs)
    model = get_peft_model(base, case.make_config(kind)).eval()
    tuner_layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert tuner_layers, "the config targeted no module"
    assert any(".default" in n for n, _ in model.named_parameters()), "adapter name missing from parameter names"
    out = logits(model, inputs)
    assert torch.isfinite(out).all()
    if case.identity_at_init:
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < n_trainable < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("case, kind", PARAMS)
def test_save_and_load_same_process(case, kind, bases, folders, tmp_path):
    model = _peft(case, kind, bases)
    inputs = make_inputs(kind, folders)
    expected = logits(model, inputs)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert "library_name: peft" in (tmp_path / "README.md").read_text()
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved and not any(".default." in k for k in saved)  # the adapter name is dropped on disk
    for low_cpu in (False, True):
        loaded = PeftModel.from_pretrained(bases(kind), tmp_path, low_cpu_mem_usage=low_cpu).eval()
        torch.testing.assert_close(logits(loaded, inputs), expected, atol=ATOL, rtol=0)
        a, b = get_peft_model_state_dict(model), get_peft_model_state_dict(loaded)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


@pytest.fixture(scope="module")
def fresh_process_outputs(folders, bases, tmp_path_factory):
    """Save one perturbed adapter per (case, kind), then load all of them in one fresh process."""
    root = tmp_path_factory.mktemp("fresh")
    jobs, expected = [], {}
    for case in CASES:
        for kind in KINDS:
            if kind not in case.kinds:
                continue
            key = f"{case.name}-{kind}"
            model = _peft(case, kind, bases)
            inputs = make_inputs(kind, folders)
            expected[key] = logits(model, inputs)
            model.save_pretrained(root / key)
            save_file({k: v.contiguous() for k, v in inputs.items()}, str(root / f"{key}.inputs.safetensors"))
            jobs.append({"key": key, "kind": kind, "folder": folders.get(kind)})
    (root / "jobs.json").write_text(json.dumps(jobs))
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO_ROOT)!r})
import hf_lowdata
import torch
from pathlib import Path
from peft import AutoPeftModelForSequenceClassification, PeftModel
from safetensors.torch import load_file, save_file
from tests.conformance.models import ToyMLP, build_base, logits
root = Path({str(root)!r})
out = {{}}
for job in json.loads((root / "jobs.json").read_text()):
    key, kind = job["key"], job["kind"]
    inputs = load_file(str(root / f"{{key}}.inputs.safetensors"))
    folders = {{kind: job["folder"]}}
    out[key + "|PeftModel"] = logits(PeftModel.from_pretrained(build_base(kind, folders), root / key).eval(), inputs)
    if kind != "mlp":
        auto = AutoPeftModelForSequenceClassification.from_pretrained(root / key, num_labels=2).eval()
        out[key + "|AutoPeftModel"] = logits(auto, inputs)
        plain = build_base(kind, folders)
        plain.load_adapter(str(root / key))
        out[key + "|load_adapter"] = logits(plain.eval(), inputs)
save_file(out, str(root / "outputs.safetensors"))
print("ok")
"""
    run_python(code, timeout=600)
    return expected, load_file(root / "outputs.safetensors")


@pytest.mark.parametrize("case, kind", PARAMS)
def test_load_in_fresh_process(case, kind, fresh_process_outputs):
    expected, outputs = fresh_process_outputs
    key = f"{case.name}-{kind}"
    routes = ["PeftModel"] + ([] if kind == "mlp" else ["AutoPeftModel", "load_adapter"])
    for route in routes:
        torch.testing.assert_close(outputs[f"{key}|{route}"], expected[key], atol=ATOL, rtol=0, msg=route)


@pytest.mark.parametrize("case, kind", PARAMS)
def test_merge_unmerge_and_unload(case, kind, bases, folders):
    model = _peft(case, kind, bases)
    inputs = make_inputs(kind, folders)
    expected = logits(model, inputs)
    if not case.mergeable:
        with pytest.raises((ValueError, TypeError, NotImplementedError), match=case.merge_error):
            model.merge_and_unload()
        torch.testing.assert_close(logits(model, inputs), expected, atol=ATOL, rtol=0)
        return
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    model.base_model.merge_adapter()
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-4, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.base_model.merge_adapter()  # idempotent: already merged
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-4, rtol=0)
    model.base_model.unmerge_adapter()
    for n, p in model.named_parameters():
        if n in base_weights:
            torch.testing.assert_close(p, base_weights[n], atol=1e-5, rtol=0, msg=n)
    model.train()
    model.base_model.merge_adapter(safe_merge=True)  # merging in train mode is deterministic too
    model.eval()
    torch.testing.assert_close(logits(model, inputs), expected, atol=1e-4, rtol=0)
    model.base_model.unmerge_adapter()
    merged = model.merge_and_unload()
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert type(merged) is type(bases(kind))
    torch.testing.assert_close(logits(merged, inputs), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("case, kind", PARAMS)
def test_merge_in_half_precision(case, kind, bases, folders):
    model = _peft(case, kind, bases)
    inputs = make_inputs(kind, folders)
    expected = logits(model, inputs)
    model = model.to(torch.bfloat16)
    inputs = cast_inputs(inputs, torch.bfloat16)
    if not case.mergeable:
        with pytest.raises((ValueError, TypeError, NotImplementedError), match=case.merge_error):
            model.merge_and_unload()
        return
    merged = model.merge_and_unload()
    assert all(p.dtype == torch.bfloat16 for p in merged.parameters())
    torch.testing.assert_close(logits(merged, inputs), expected, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("case, kind", PARAMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_and_adapter_autocast(case, kind, dtype, bases, folders):
    inputs = make_inputs(kind, folders)
    base = bases(kind).to(dtype)
    model = get_peft_model(base, case.make_config(kind), autocast_adapter_dtype=True).eval()
    adapter_params = [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" not in n]
    assert adapter_params and all(p.dtype == torch.float32 for p in adapter_params)  # adapters autocast to fp32
    out = logits(model, cast_inputs(inputs, dtype))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("case, kind", PARAMS)
def test_disable_adapter_context(case, kind, bases, folders):
    inputs = make_inputs(kind, folders)
    base_out = logits(bases(kind), inputs)
    model = _peft(case, kind, bases)
    adapted = logits(model, inputs)
    assert not torch.allclose(adapted, base_out, atol=1e-4), "perturbed adapter should change the output"
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, inputs), base_out, atol=ATOL, rtol=0)
        with model.disable_adapter():  # re-entrant
            torch.testing.assert_close(logits(model, inputs), base_out, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits(model, inputs), adapted, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case, kind", PARAMS)
def test_training_changes_only_adapter_parameters(case, kind, bases, folders):
    model = get_peft_model(bases(kind), case.make_config(kind))
    inputs = make_inputs(kind, folders)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    target = torch.tensor([0, 1, 0, 1])[: next(iter(inputs.values())).shape[0]]
    for _ in range(3):
        out = model(**inputs)
        out = out if isinstance(out, torch.Tensor) else out.logits
        torch.nn.functional.cross_entropy(out, target).backward()
        opt.step()
        opt.zero_grad()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed, "training changed nothing"
    assert changed <= trainable, changed - trainable
    assert all("base_layer" not in n for n in changed)


@pytest.mark.parametrize("case, kind", PARAMS)
def test_several_adapters(case, kind, bases, folders):
    inputs = make_inputs(kind, folders)
    model = _peft(case, kind, bases)
    first = logits(model, inputs)
    model.add_adapter("other", case.make_config(kind))
    model.set_adapter("other")
    assert model.active_adapter == "other"
    _perturb_named(model, "other", seed=5)
    second = logits(model, inputs)
    assert not torch.allclose(first, second, atol=1e-4)
    model.set_adapter("default")
    torch.testing.assert_close(logits(model, inputs), first, atol=ATOL, rtol=0)
    model.delete_adapter("other")
    assert "other" not in model.peft_config
    assert not any(re.search(r"\.other(\.|$)", n) for n, _ in model.named_parameters())
    torch.testing.assert_close(logits(model, inputs), first, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case, kind", [p for p in PARAMS if p.values[0].multiple_active])
def test_several_active_adapters_at_once(case, kind, bases, folders):
    """Several adapters active together (PEFT allows it without a modules_to_save head)."""
    inputs = make_inputs(kind, folders)
    model = get_peft_model(bases(kind), _without_head(case.make_config(kind)))
    model.add_adapter("other", _without_head(case.make_config(kind)))
    _perturb_named(model, "default", seed=1)
    _perturb_named(model, "other", seed=2)
    model.eval()
    alone = [logits(model, inputs)]
    model.set_adapter("other")
    alone.append(logits(model, inputs))
    model.base_model.set_adapter(["default", "other"])
    assert model.base_model.active_adapters == ["default", "other"]
    both = logits(model, inputs)
    with model.disable_adapter():
        base = logits(model, inputs)
    # Relative to each adapter's own effect: tiny random models have logits of ~1e-2, so a fixed
    # absolute tolerance cannot tell "both active" from "one active".
    for one, other in ((alone[0], alone[1]), (alone[1], alone[0])):
        effect = (other - base).abs().max()
        assert effect > 0 and (both - one).abs().max() > 0.1 * effect


def _without_head(config):
    config.task_type = None
    config.modules_to_save = None
    return config


def _perturb_named(model, adapter: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".{adapter}." in name or name.endswith(f".{adapter}"):
                p.add_(0.05 * torch.randn(p.shape, generator=gen).to(p.dtype))


@pytest.mark.parametrize("case, kind", PARAMS)
def test_requires_grad_after_loading(case, kind, bases, tmp_path):
    _peft(case, kind, bases).save_pretrained(tmp_path)
    frozen = PeftModel.from_pretrained(bases(kind), tmp_path)
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = PeftModel.from_pretrained(bases(kind), tmp_path, is_trainable=True)
    names = {n for n, p in trainable.named_parameters() if p.requires_grad}
    adapter_keys = {k.rsplit(".", 1)[0] for k in _adapter_keys(trainable)}
    assert names and all("base_layer" not in n for n in names)
    assert all(any(key.split(".")[-1] in n for n in names) for key in adapter_keys)


@pytest.mark.parametrize("case, kind", PARAMS)
def test_direct_injection_and_state_dict(case, kind, bases, folders):
    config = _without_head(case.make_config(kind))  # direct injection works on the bare model
    model = _peft(case, kind, bases)
    heads = set(getattr(model, "modules_to_save", None) or ())  # head copies saved through modules_to_save
    reference_state = {k.removeprefix("base_model.model."): v for k, v in get_peft_model_state_dict(model).items()
                       if "modules_to_save" not in k and k.rsplit(".", 2)[-2] not in heads}
    injected = inject_adapter_in_model(config, bases(kind))
    assert any(isinstance(m, BaseTunerLayer) for m in injected.modules())
    result = set_peft_model_state_dict(injected, reference_state)
    assert not result.unexpected_keys
    state = get_peft_model_state_dict(injected)
    assert state.keys() == reference_state.keys()
    for k, v in reference_state.items():
        torch.testing.assert_close(state[k], v, atol=0, rtol=0, msg=k)
