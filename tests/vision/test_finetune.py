"""Full fine-tuning, LoRA and FTP on an image task (hf_lowdata.vision.finetune) and their benchmark rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from hf_lowdata.budgets import get_budget
from hf_lowdata.methods import RunContext
from hf_lowdata.vision import images_to_pixel_values, load_digits, make_image_few_shot_task
from hf_lowdata.vision.finetune import fit_image_classifier, predict_images

SIZE = 32  # a 1x1 feature map: the smallest input Lite0 takes, fast on CPU


@pytest.fixture(scope="module")
def task():
    return make_image_few_shot_task(load_digits("train"), load_digits("test"), k=2, seed=0, name="digits")


def _context(tmp_path, method: str, steps: int, learning_rate: float | None = None) -> RunContext:
    budget = get_budget(method)
    budget = replace(budget, min_steps=steps, max_steps=steps, learning_rate=learning_rate or budget.learning_rate)
    return RunContext(seed=0, work_dir=tmp_path, budget=budget, quiet=True)


def _labelled_loss(model: torch.nn.Module, task) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(pixel_values=images_to_pixel_values(task.labelled.images, SIZE)).logits
    return torch.nn.functional.cross_entropy(logits, torch.as_tensor(task.labelled.labels)).item()


@pytest.mark.parametrize(("method", "learning_rate"), [("full", 3e-4), ("lora", 1e-2), ("ftp", 3e-4)])
def test_each_backbone_method_learns_the_labelled_images_and_touches_only_its_parameters(tmp_path, task, method,
                                                                                         learning_rate):
    from hf_lowdata.methods.base import load_base_classifier

    ctx = _context(tmp_path, method, steps=30, learning_rate=learning_rate)
    start = load_base_classifier(task, ctx)  # the same seeded start the method builds on
    before = {name: p.detach().clone() for name, p in start.state_dict().items()}
    model = fit_image_classifier(method, task, ctx, SIZE)
    assert _labelled_loss(model, task) < _labelled_loss(start, task) - 0.5  # it fitted the labelled images
    base = model if method == "full" else model.get_base_model()
    after = {name.replace(".base_layer", ""): p for name, p in base.state_dict().items()
             if "lora_" not in name and "ftp_" not in name and "modules_to_save" not in name}
    changed = {name for name, p in before.items() if name in after and not torch.equal(p, after[name])}
    conv = "efficientnet.encoder.blocks.1.projection.project_conv.weight"
    if method == "full":  # every weight trains; BatchNorm statistics stay the pretrained ones (the default)
        assert {conv, "efficientnet.encoder.blocks.1.projection.project_bn.weight"} <= changed
        assert not {name for name in changed if name.endswith(("running_mean", "running_var"))}
    else:  # an adapter: the pretrained weights and statistics stay exactly as loaded
        assert not {name for name in changed if not name.startswith("classifier")}, sorted(changed)[:5]
        assert model.peft_config["default"].peft_type.value == method.upper()


def test_full_fine_tuning_with_batch_statistics_updates_them_and_other_modes_are_refused(tmp_path, task):
    from hf_lowdata.methods.base import load_base_classifier

    ctx = _context(tmp_path, "full", steps=3)
    running = "efficientnet.encoder.blocks.1.projection.project_bn.running_mean"
    before = load_base_classifier(task, ctx).state_dict()[running].clone()
    ctx.options["batchnorm"] = "batch"  # PyTorch's default for a trainable layer
    assert not torch.equal(fit_image_classifier("full", task, ctx, SIZE).state_dict()[running], before)
    ctx.options["batchnorm"] = "running"
    with pytest.raises(ValueError, match=r"batchnorm='running': choose one of \['frozen', 'batch'\]"):
        fit_image_classifier("full", task, ctx, SIZE)


def test_lora_on_images_adapts_the_1x1_convolutions_and_reloads_to_the_same_predictions(tmp_path, task):
    from peft import PeftModel

    from hf_lowdata.methods.base import load_base_classifier
    from hf_lowdata.methods.finetune import lora_target_modules

    ctx = _context(tmp_path, "lora", steps=10)
    assert lora_target_modules(load_base_classifier(task, ctx)) == ["expand_conv", "project_conv"]
    model = fit_image_classifier("lora", task, ctx, SIZE)
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"expand_conv", "project_conv"}
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_base_classifier(task, ctx), tmp_path / "adapter").eval()
    images = task.test.images[:50]
    with torch.no_grad():
        expected = model(pixel_values=images_to_pixel_values(images, SIZE)).logits
        got = reloaded(pixel_values=images_to_pixel_values(images, SIZE)).logits
    torch.testing.assert_close(got, expected)


def test_predictions_do_not_depend_on_the_batch(task):
    from hf_lowdata.vision import load_efficientnet_lite0

    model = load_efficientnet_lite0(10, seed=0)
    images = task.test.images[:70]
    one_batch = predict_images(model, images, SIZE, batch_size=70)
    assert np.array_equal(predict_images(model, images, SIZE, batch_size=16), one_batch)
    with torch.no_grad():
        direct = model(pixel_values=images_to_pixel_values(images, SIZE)).logits.argmax(-1).numpy()
    assert np.array_equal(one_batch, direct)
    assert predict_images(model, images[:0], SIZE).shape == (0,)


def test_only_backbone_methods_train_on_images(tmp_path, task):
    with pytest.raises(ValueError, match=r"'probe' does not train on images here; choose one of \['full'"):
        fit_image_classifier("probe", task, RunContext(work_dir=tmp_path), SIZE)


def test_vision_benchmark_runs_the_backbone_methods_and_changes_budgets_on_dev_only(tmp_path):
    from hf_lowdata.bench.vision import VisionBenchConfig, _budget, run_vision_benchmark

    common = dict(datasets=["digits"], methods=["lora"], shots=[1], seeds=[0], image_size=SIZE, test_limit=20,
                  budget_scale=0.1, feature_cache_dir=tmp_path / "features")
    [record] = run_vision_benchmark(VisionBenchConfig(out=tmp_path / "test", **common))
    assert record["status"] == "ok" and record["test_examples"] == 20, record.get("traceback")
    assert 0 < record["trainable_params"] < 500_000 and record["adapter_bytes"] > 4 * record["trainable_params"]
    assert record["unlabelled"] == 0  # LoRA reads no pool
    with pytest.raises(SystemExit, match=r"batchnorm=none: choose one of \['frozen', 'batch'\]"):
        run_vision_benchmark(VisionBenchConfig(out=tmp_path / "refused", options={"batchnorm": "none"}, **common))
    with pytest.raises(SystemExit, match="budget fields may be changed only on a dev split"):
        run_vision_benchmark(VisionBenchConfig(out=tmp_path / "refused", options={"learning_rate": 1e-2}, **common))
    assert not (tmp_path / "refused").exists()
    dev = [VisionBenchConfig(out=tmp_path / "dev", dev=50, options={"learning_rate": lr}, resume=True, **common)
           for lr in (1e-5, 5e-2)]
    records = run_vision_benchmark(dev[0]) + run_vision_benchmark(dev[1])[1:]
    assert [r["options"] for r in records] == [{"learning_rate": 1e-5}, {"learning_rate": 5e-2}]
    assert all(r["status"] == "ok" and r["dataset"] == "digits (dev 50)" for r in records)
    assert _budget(dev[1], "lora").learning_rate == 5e-2 and _budget(dev[1], "twin_turbo").learning_rate == 5e-2
    assert _budget(dev[1], "lora").steps(10) == get_budget("lora").scaled(0.1).steps(10)  # the rest as fixed


def test_image_tasks_take_the_image_learning_rates_and_the_text_budget_otherwise(tmp_path, task, monkeypatch):
    from hf_lowdata.bench.vision import VisionBenchConfig, _budget
    from hf_lowdata.budgets import IMAGE_LEARNING_RATES, image_budget
    from hf_lowdata.methods import TransformerMethod

    assert image_budget("full").learning_rate == IMAGE_LEARNING_RATES["full"] != get_budget("full").learning_rate
    assert replace(image_budget("full"), learning_rate=0.0) == replace(get_budget("full"), learning_rate=0.0)
    assert image_budget("probe") == get_budget("probe")
    config = VisionBenchConfig(datasets=["digits"], methods=["full"], out=tmp_path)
    assert _budget(config, "ftp").learning_rate == IMAGE_LEARNING_RATES["ftp"]
    seen = []  # what fit_image_classifier trains with when the context names no budget
    monkeypatch.setattr(TransformerMethod, "make_trainer", lambda self, task, ctx, *a, **k: seen.append(
        ctx.budget_for(self.name)) or (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        fit_image_classifier("full", task, RunContext(work_dir=tmp_path), SIZE)
    assert seen == [image_budget("full")]


@pytest.mark.parametrize(("bad", "message"), [
    (lambda x: x.astype(np.float32) / 255.0, r"float32.*\(images \* 255\)\.round\(\)\.astype\(np\.uint8\)"),
    (lambda x: np.repeat(x[:, None], 3, axis=1), r"channels first: images\.transpose\(0, 2, 3, 1\)"),
    (lambda x: np.stack([x] * 4, axis=-1), r"RGBA: drop the alpha channel"),
    (lambda x: x[0], r"one image: images\[None\]"),
    (lambda x: list(x), r"numpy uint8 array"),
])
def test_images_the_model_would_misread_are_refused_with_the_conversion(task, bad, message):
    """Float pixels in [0, 1] were divided by 255 again: every image predicted one class, without an error; other
    layouts failed deep in the stem convolution."""
    from hf_lowdata.data import DataError
    from hf_lowdata.vision import load_efficientnet_lite0

    model = load_efficientnet_lite0(10, seed=0)
    with pytest.raises(DataError, match=message):
        predict_images(model, bad(task.test.images[:4]), SIZE)
    with pytest.raises(DataError, match=message):
        images_to_pixel_values(bad(task.test.images[:4]), SIZE)


def test_every_batchnorm_of_lite0_takes_the_configured_momentum():
    """transformers built the 15 expansion BatchNorms with torch's default 0.1 instead of the config's 0.01 (it
    matters to full fine-tuning with batchnorm=batch, which updates the running statistics)."""
    from hf_lowdata.vision import load_efficientnet_lite0

    model = load_efficientnet_lite0(10, seed=0)
    momenta = {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {model.config.batch_norm_momentum} == {0.01}
