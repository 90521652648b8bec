"""Push a saved adapter (or full model, or probe) to the Hugging Face Hub: exactly its files and its card.

This is the one feature of hf_lowdata that needs a network. Everything that can be checked offline
is checked first (the folder, the weight files, the token, ``HF_HUB_OFFLINE``), and every failure
is a :class:`HubError` that says what went wrong and what to do; nothing is half-uploaded, because
all files go up in one commit. That commit also deletes the repository's model files (weights, the configs
and tokenizer files loaders read) that the folder does not hold (left by an earlier push: an old adapter beside a new probe
would load instead of it), so the repository holds exactly the folder's model files; other files a user
added by hand (images, notes) stay. ``dry_run=True`` lists the files it would upload and delete
(reading the repository's file list when online) and changes nothing.

``PeftModel.push_to_hub`` works on hf_lowdata adapters as on LoRA's (it uploads the adapter files
and transformers' card, or keeps the card already in the repository); this module uploads the
hf_lowdata card written by ``hf-lowdata train``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .model_card import hub_cache_repo_id
from .models import packaged_hub_id
from .workflow import (
    CHECKPOINTS_DIR,
    EVAL_FILE,
    PICKLE_SUFFIXES,
    WorkflowError,
    check_saved_folder,
    output_kind,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi

#: Files of a PEFT adapter folder that go to the Hub (``README.md`` when present).
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")
#: Files of a further adapter's sub-folder (``save_pretrained`` of a model with several adapters).
_NAMED_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_NOT_UPLOADED = {EVAL_FILE}
#: Files of a Hub repository that a push keeps although the folder has none: git's own settings.
_KEPT_IN_REPO = {".gitattributes"}
_NETWORK_ERROR_NAMES = {"TransportError", "RequestError", "ConnectError", "TimeoutException", "NetworkError",
                        "ConnectionError", "ConnectTimeout", "ProxyError"}


class HubError(WorkflowError):
    """Pushing to the Hub failed or cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class PushResult:
    """What was (or, for a dry run, would be) uploaded."""

    repo_id: str
    files: tuple[str, ...]
    total_bytes: int
    url: str | None = None
    dry_run: bool = False
    #: Size of each uploaded file, as uploaded (a rewritten adapter config differs from the local file).
    file_bytes: tuple[int, ...] = ()
    #: Files of the repository deleted (dry run: to delete) because the folder does not hold them;
    #: ``None``: a dry run that could not read the repository (offline or unreachable).
    deleted: tuple[str, ...] | None = ()


def files_to_upload(folder: str | os.PathLike) -> list[Path]:
    """The files of a saved folder that belong on the Hub: weights, configs, tokenizer, card.

    PEFT adapters: exactly ``adapter_config.json``, ``adapter_model.safetensors`` and ``README.md``, plus the
    same two files of every further adapter ``save_pretrained`` wrote into a sub-folder named after it
    (``PeftModel.from_pretrained(..., subfolder=name)`` loads it from the Hub). Other outputs: every
    top-level file except the local evaluation record and hidden files.
    Pickle weight files are refused, and damaged safetensors files are refused.
    """
    path = Path(folder)
    try:
        kind = check_saved_folder(path)  # required files present, settings parse, weights open
    except WorkflowError as err:
        raise HubError(f"Not pushing: {err}") from err
    if not (path / "README.md").is_file():
        raise HubError(f"Not pushing: {path} has no README.md model card. hf-lowdata train writes it last, so this "
                       "may be a cut-off save: train again (or add a card) and push then. Nothing was uploaded.")
    if kind == "peft":  # check_saved_folder made sure config and weights are there
        files = [path / n for n in PEFT_FILES if (path / n).is_file()] + _named_adapter_files(path)
    else:
        pickles = sorted(p.name for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise HubError(f"{path} holds pickle files ({', '.join(pickles)}); hf_lowdata only publishes "
                           "safetensors weights. Remove them or re-save with safe_serialization=True.")
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name not in _NOT_UPLOADED)
        files += sorted(p for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")
                        and d.name != "checkpoints" for p in d.rglob("*") if p.is_file())
    return files


def _named_adapter_files(path: Path) -> list[Path]:
    """The files of the adapters other than ``default`` in a PEFT folder: ``save_pretrained`` writes each into a
    sub-folder named after it. Each must be complete (config and safetensors weights), as the folder's own."""
    files: list[Path] = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and (p / "adapter_config.json").is_file()
                      and not p.name.startswith(".") and p.name != CHECKPOINTS_DIR):
        try:
            check_saved_folder(sub)
        except WorkflowError as err:
            raise HubError(f"Not pushing: the folder holds a further adapter {sub.name!r} that cannot be published: "
                           f"{err} Nothing was uploaded.") from err
        files += [sub / n for n in _NAMED_ADAPTER_FILES]
    return files


def _hub_offline() -> bool:
    from huggingface_hub import is_offline_mode

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or is_offline_mode()


def _is_network_error(err: BaseException) -> bool:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        if any(cls.__name__ in _NETWORK_ERROR_NAMES for cls in type(seen).__mro__):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _explain(err: Exception, endpoint: str, folder: Path) -> HubError:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    kept = f"Nothing was uploaded; the files in {folder} are unchanged."
    if isinstance(err, OfflineModeIsEnabled):
        return HubError(f"Hugging Face Hub offline mode is on (HF_HUB_OFFLINE), so hf_lowdata did not contact "
                        f"the Hub. Unset HF_HUB_OFFLINE and run again to push. {kept}")
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, HfHubHTTPError) and status in (401, 403):
        return HubError(f"The Hub refused the token (HTTP {status}): it is invalid, expired, or has no write "
                        f"access to this repository. Create a write token at {endpoint}/settings/tokens and log "
                        f"in with `hf auth login` (or set HF_TOKEN). {kept}")
    if _is_network_error(err):
        return HubError(f"Cannot reach the Hugging Face Hub at {endpoint}: no network connection? "
                        f"({type(err).__name__}: {err}). Pushing is the one hf_lowdata feature that needs a "
                        f"network; connect and run again. {kept}")
    return HubError(f"The Hub rejected the upload ({type(err).__name__}: {err}). {kept}")


def hub_file_contents(folder: str | os.PathLike) -> list[tuple[str, Path | bytes]]:
    """``(name in the repo, file or bytes)`` for every file of :func:`files_to_upload`.

    Locally a PEFT adapter records its base model's folder (a packaged model's install folder, or for an
    ``org/name`` id its snapshot in the Hugging Face cache), so ``AutoPeftModel`` loads it offline on this
    machine; a path is no use anywhere else, so the copy that leaves the machine (Hub upload, the demo's
    download) names the model's Hub id instead.
    """
    path = Path(folder)
    contents: list[tuple[str, Path | bytes]] = []
    for file in files_to_upload(path):
        name = file.relative_to(path).as_posix()
        if file.name == "adapter_config.json":
            config = json.loads(file.read_text())
            recorded = config.get("base_model_name_or_path")
            hub_id = (packaged_hub_id(recorded) or hub_cache_repo_id(recorded)) if recorded else None
            if hub_id:
                config["base_model_name_or_path"] = hub_id
                contents.append((name, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()))
                continue
        contents.append((name, file))
    return contents


#: Top-level files that loaders read to decide what a repository holds and how to load it (PEFT, transformers,
#: tokenizers, sentence-transformers, hf_lowdata's own outputs): a stale one from an earlier push would be read
#: instead of, or beside, the new upload's.
_LOADER_FILES = frozenset({
    "adapter_config.json", "config.json", "generation_config.json", "model.safetensors.index.json",
    "probe_config.json", "setfit_config.json", "classifier.json", "preprocessor_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
    "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "config_setfit.json",
})


def _is_model_file(name: str) -> bool:
    """Whether a repository file belongs to a saved model (so a push deletes it when stale): a loader's file or a
    weights file at the top level, a further PEFT adapter's config or weights (``name/adapter_config.json``), or
    anything in SetFit's ``body/`` or a sentence-transformers module folder (``1_Pooling/``). Anything else (a
    LICENSE, notes, images, results added by hand) is the user's."""
    import re

    if "/" in name:  # also a further adapter's files (``name/adapter_config.json``; pickles of older pushes)
        named_adapter = name.count("/") == 1 and name.endswith(("/adapter_config.json", "/adapter_model.safetensors",
                                                                "/adapter_model.bin"))
        return named_adapter or name.startswith("body/") or re.match(r"\d+_[A-Za-z]+/", name) is not None
    return name in _LOADER_FILES or name.endswith((".safetensors", *PICKLE_SUFFIXES))


def _stale_files(api: HfApi, repo_id: str, names: Sequence[str]) -> tuple[str, ...]:
    """The repository's model files (:func:`_is_model_file`) that the upload ``names`` does not hold (left by an
    earlier push), to delete."""
    keep = set(names) | _KEPT_IN_REPO
    return tuple(sorted(f for f in api.list_repo_files(repo_id, repo_type="model")
                        if f not in keep and _is_model_file(f)))


def _dry_run_stale_files(repo_id: str, names: Sequence[str], token: str | None,
                         endpoint: str | None) -> tuple[str, ...] | None:
    """What a push would delete (:func:`_stale_files`); ``()`` for a repository that does not exist yet,
    ``None`` when offline or the repository cannot be read. Reads only; a dry run needs no token."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    if _hub_offline():
        return None
    try:
        return _stale_files(HfApi(endpoint=endpoint, token=token), repo_id, names)
    except RepositoryNotFoundError:
        return ()
    except Exception:  # noqa: BLE001 - unreachable or unreadable: the dry run says it cannot tell
        return None


def push_adapter(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    dry_run: bool = False,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> PushResult:
    """Upload the saved folder's Hub files (see :func:`files_to_upload`) to ``repo_id`` in one commit,
    which also deletes the repository's other files (except ``.gitattributes``).

    Creates the model repository if needed (``private`` applies then). ``token`` defaults to the
    logged-in token (``hf auth login`` or ``HF_TOKEN``).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(folder)
    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("it needs a namespace")
    except HFValidationError as err:
        raise HubError(f"{repo_id!r} is not a valid repository id ({err}). Use 'your-name/your-adapter'.") from err
    contents = hub_file_contents(path)
    sizes = tuple(len(c) if isinstance(c, bytes) else c.stat().st_size for _, c in contents)
    total = sum(sizes)
    names = tuple(name for name, _ in contents)
    if dry_run:
        return PushResult(repo_id=repo_id, files=names, total_bytes=total, dry_run=True, file_bytes=sizes,
                          deleted=_dry_run_stale_files(repo_id, names, token, endpoint))
    if _hub_offline():
        raise HubError("HF_HUB_OFFLINE is set, so hf_lowdata does not contact the Hub. Pushing is the one feature "
                       "that needs a network: unset HF_HUB_OFFLINE (or set it to 0) and run again. Nothing was uploaded.")
    token = token or get_token()
    if not token:
        raise HubError("No Hugging Face token found. Log in with `hf auth login`, set HF_TOKEN, or paste a token "
                       "with write access. Nothing was uploaded.")
    api = HfApi(endpoint=endpoint, token=token)
    hub = api.endpoint
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        deleted = _stale_files(api, repo_id, names)
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=c if isinstance(c, bytes) else str(c))
            for name, c in contents]
        operations += [CommitOperationDelete(path_in_repo=name, is_folder=False) for name in deleted]
        api.create_commit(repo_id, operations=operations, repo_type="model",
                          commit_message=commit_message or f"Upload {output_kind(path)} output of hf_lowdata")
    except Exception as err:  # noqa: BLE001 - every failure is explained, none is a stack trace
        raise _explain(err, hub, path) from err
    return PushResult(repo_id=repo_id, files=names, total_bytes=total, url=str(url), file_bytes=sizes,
                      deleted=deleted)
