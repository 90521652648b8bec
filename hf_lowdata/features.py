"""Feature cache: a frozen backbone's token states, computed once per (backbone, input).

Methods that train only on top of a frozen backbone without augmentation (TwinTurbo's projector)
need the backbone's last token states of every training and unlabelled example at every step.
Computing them once and reusing them removes the backbone from the training loop: caching costs
one forward pass over the data, after which a step touches only the trained modules.

Entries are keyed by a backbone fingerprint (a digest of its files' contents, plus the input
settings such as ``max_length`` or image size) and by a digest of each input (text or image
bytes), so overlapping sets (the unlabelled pools of different seeds, one test set used by many
runs) share entries. They are kept in memory and, with ``directory=``, on disk as safetensors shards
written atomically (a kill leaves the previous shards readable). Each shard records a checksum of
its tensors' bytes; a shard that cannot be read, or whose contents no longer match their checksum
(a flipped byte on disk), is skipped with a warning and its entries are recomputed. Every lookup
returns fresh tensors, so a caller editing them in place never changes a later hit (``as_stored=True`` returns the
cache's own tensors instead, in their storage dtype: no float32 copy for a caller that only reads them, such as
TwinTurbo's training, whose :func:`collate_token_states` builds float32 batches). Storage is fp16 by default (half the memory, within fp16 rounding of
the fp32 states; an input whose states exceed fp16's range is kept in float32 rather than as inf);
``dtype=torch.float32`` caches exactly what the backbone returned.
"""

from __future__ import annotations

import hashlib
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from .leftovers import remove_dead_leftovers
from .tuners.twin_turbo.layer import MASK_KEY, TOKENS_KEY, token_states


def digest(*parts: bytes | str) -> str:
    """A short stable hex digest of ``parts``."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x1e")
    return h.hexdigest()


CHECKSUM_KEY = "hf_lowdata_checksum"


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of a shard's names, dtypes, shapes and bytes, in name order."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _load_checked_shard(path: Path) -> dict[str, torch.Tensor]:
    """A shard's tensors, after checking them against the checksum written with them."""
    with safe_open(str(path), framework="pt") as f:
        expected = (f.metadata() or {}).get(CHECKSUM_KEY)
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    if expected is None:
        raise ValueError("it has no checksum (written by an older hf_lowdata)")
    if _checksum(tensors) != expected:
        raise ValueError("its contents do not match their checksum (damaged on disk)")
    return tensors


def model_fingerprint(folder: str | os.PathLike, *settings: Any) -> str:
    """Identify a backbone by its files' contents (:func:`~hf_lowdata.models.model_content_digest`) and the
    input settings: a model retrained in place never reuses the token states of its earlier weights."""
    from .models import model_content_digest

    return digest(model_content_digest(folder), *(repr(s) for s in settings))


class FeatureCache:
    """Per-input token states (T_i, d) in memory and optionally on disk.

    Args:
        directory: folder for safetensors shards (``None``: memory only).
        dtype: storage dtype (fp16 by default; states are returned in float32).
    """

    def __init__(self, directory: str | os.PathLike | None = None, dtype: torch.dtype = torch.float16) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.dtype = dtype
        self._entries: dict[str, dict[str, torch.Tensor]] = {}
        self._lock = threading.RLock()
        self._swept: set[Path] = set()
        #: How many inputs went through the backbone (a cache hit adds nothing).
        self.computed = 0

    def _namespace(self, namespace: str) -> dict[str, torch.Tensor]:
        if namespace not in self._entries:
            entries: dict[str, torch.Tensor] = {}
            folder = self._folder(namespace)
            if folder is not None and folder.is_dir():
                for shard in sorted(folder.glob("*.safetensors")):
                    try:
                        entries.update(_load_checked_shard(shard))
                    except Exception as err:  # noqa: BLE001 - a damaged shard is recomputed, not fatal
                        warnings.warn(
                            f"Skipping unreadable feature-cache shard {shard}: {err}; its entries are recomputed",
                            stacklevel=3,
                        )
            self._entries[namespace] = entries
        return self._entries[namespace]

    def _folder(self, namespace: str) -> Path | None:
        """The namespace's shard folder; a storage dtype other than fp16 has folders of its own (a float32 cache
        must not serve the fp16-rounded states of a default cache in the same directory)."""
        if self.directory is None:
            return None
        suffix = "" if self.dtype == torch.float16 else "-" + str(self.dtype).removeprefix("torch.")
        return self.directory / f"{namespace}{suffix}"

    def lookup(
        self, namespace: str, keys: Sequence[str], compute: Callable[[list[int]], list[torch.Tensor]],
        as_stored: bool = False,
    ) -> list[torch.Tensor]:
        """Token states for ``keys``; ``compute(indices)`` runs the backbone on the missing ones only. Float32
        copies, or with ``as_stored`` the cached tensors themselves (storage dtype; the caller must not modify them)."""
        with self._lock:
            entries = self._namespace(namespace)
            missing = [i for i, key in enumerate(keys) if key not in entries]
            first = {}
            for i in missing:
                first.setdefault(keys[i], i)
            todo = sorted(first.values())
            if todo:
                new = {keys[i]: self._stored(s) for i, s in zip(todo, compute(todo))}
                self.computed += len(new)
                entries.update(new)
                self._write_shard(namespace, new)
            if as_stored:
                return [entries[key] for key in keys]
            # a copy each time: a float32 cache would otherwise hand out its own storage
            return [entries[key].to(torch.float32, copy=True) for key in keys]

    def _stored(self, states: torch.Tensor) -> torch.Tensor:
        """``states`` in the storage dtype; in float32 instead where that dtype cannot hold them (an fp16 cache
        given states beyond +-65504 would turn them into inf, and the projector's loss into NaN)."""
        stored = states.to(self.dtype).contiguous()
        if stored.dtype != states.dtype and not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(states).all()):
            return states.to(torch.float32).contiguous()
        return stored

    def _write_shard(self, namespace: str, tensors: dict[str, torch.Tensor]) -> None:
        folder = self._folder(namespace)
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if folder not in self._swept:  # once per folder: shards staged by killed processes
            remove_dead_leftovers(folder)
            self._swept.add(folder)
        final = folder / f"{digest(*sorted(tensors))}.safetensors"
        tmp = final.with_name(final.name + f".tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata={CHECKSUM_KEY: _checksum(tensors)})
        os.replace(tmp, final)


class TokenStateDataset(Dataset):
    """Cached token states (and labels) as a dataset for :class:`~hf_lowdata.training.LowDataTrainer`."""

    def __init__(self, states: Sequence[torch.Tensor], labels: Sequence[int] | None = None) -> None:
        if labels is not None and len(labels) != len(states):
            raise ValueError(f"{len(states)} token-state entries but {len(labels)} labels.")
        self.states = list(states)
        self.labels = None if labels is None else [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {TOKENS_KEY: self.states[i]}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def collate_token_states(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad a list of (T_i, d) token states to (B, T_max, d) with a (B, T_max) mask (+ labels). States stored in
    half precision (a feature cache's own tensors) come out in float32, as the projector trains."""
    states = [f[TOKENS_KEY] for f in features]
    longest = max(s.shape[0] for s in states)
    dtype = torch.float32 if states[0].dtype in (torch.float16, torch.bfloat16) else states[0].dtype
    batch = torch.zeros(len(states), longest, states[0].shape[1], dtype=dtype)
    mask = torch.zeros(len(states), longest, dtype=torch.bool)
    for i, s in enumerate(states):
        batch[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    out = {TOKENS_KEY: batch, MASK_KEY: mask}
    if "labels" in features[0]:
        out["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
    return out


def mean_pool_states(states: Sequence[torch.Tensor], normalize: bool = False) -> np.ndarray:
    """(N, d) array of the mean token state of each entry (optionally L2-normalised): a probe's features."""
    pooled = torch.stack([s.float().mean(0) for s in states])
    return (torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled).numpy()


def _unpad(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    tokens, mask = token_states(hidden, attention_mask)
    return [t[m].cpu() for t, m in zip(tokens, mask)]


def text_token_states(
    cache: FeatureCache, backbone: torch.nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int,
    model_key: str, batch_size: int = 64, on_batch: Callable[[int, int], None] | None = None,
    as_stored: bool = False,
) -> list[torch.Tensor]:
    """Last-layer token states (T_i, d) of each text (real tokens only), through ``cache``.

    ``on_batch(done, total)`` is called after each backbone batch of the texts not yet cached (progress; it may
    raise to stop, as the demo's Cancel does); ``as_stored``: see :meth:`FeatureCache.lookup`."""
    from .inference import length_sorted_batches

    @torch.inference_mode()
    def compute(indices: list[int]) -> list[torch.Tensor]:
        backbone.eval()
        device = next(backbone.parameters()).device
        out: list[torch.Tensor | None] = [None] * len(indices)
        done = 0
        for idx, batch in length_sorted_batches(tokenizer, [texts[i] for i in indices], batch_size, max_length):
            batch = {k: v.to(device) for k, v in batch.items()}
            for j, states in zip(idx, _unpad(backbone(**batch)[0], batch["attention_mask"])):
                out[j] = states
            done += len(idx)
            if on_batch is not None:
                on_batch(done, len(indices))
        return out  # type: ignore[return-value]

    # "right-padded": states cached before batches were always padded on the right may depend on their batch
    namespace = digest("text", model_key, str(max_length), "right-padded")
    return cache.lookup(namespace, [digest(t) for t in texts], compute, as_stored=as_stored)


def image_token_states(
    cache: FeatureCache, backbone: torch.nn.Module, images: np.ndarray, size: int, model_key: str,
    batch_size: int = 64,
) -> list[torch.Tensor]:
    """Final feature-map tokens ((size/32)^2, C) of each uint8 image, through ``cache``."""
    from .vision.data import images_to_pixel_values

    @torch.inference_mode()
    def compute(indices: list[int]) -> list[torch.Tensor]:
        backbone.eval()
        device = next(backbone.parameters()).device
        out: list[torch.Tensor] = []
        for start in range(0, len(indices), batch_size):
            chunk = images[np.asarray(indices[start : start + batch_size])]
            out.extend(_unpad(backbone(images_to_pixel_values(chunk, size).to(device))[0], None))
        return out

    namespace = digest("image", model_key, str(size))
    return cache.lookup(namespace, [digest(np.ascontiguousarray(img).tobytes(), str(img.shape)) for img in images],
                        compute)
