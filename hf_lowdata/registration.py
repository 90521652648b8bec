"""Register hf_lowdata's tuners with PEFT, next to LoRA.

PEFT keeps its method names in the ``str`` enum :class:`peft.utils.PeftType` and offers no public way
to add a member from outside. ``register_peft_method`` requires ``name.upper()`` to be a member
already, and transformers' ``load_adapter`` reads ``peft_type.value``, so a bare string in PEFT's
mapping dicts is not enough. This module extends the enum in place (idempotently, on Python
3.10-3.13) and then calls ``peft.utils.register_peft_method`` once per method.

Importing :mod:`hf_lowdata` does all of this; a fresh process must import it before it loads an
adapter of one of our methods, exactly as with any third-party PEFT method. PEFT cannot say so itself
(its loaders stop with a bare ``KeyError: 'FTP'``, and offer no hook to change that), so the model
card ``PeftModel.save_pretrained`` writes for one of our adapters gets a section that says it
(:func:`install_model_card_note`).
"""

from __future__ import annotations

import enum
import functools
import os
import threading
from typing import Any

#: PEFT types added by this package: ``name`` (lower case, as PEFT wants it) -> adapter prefix.
#: Prefixes start with the lower-cased type name, which is what transformers' ``load_adapter``
#: looks for in state-dict keys, and none is a prefix of another method's.
METHOD_PREFIXES: dict[str, str] = {
    "twin_turbo": "twin_turbo_",
    "mixup_blo": "mixup_blo_",
    "sparse_expert": "sparse_expert_",
    "ftp": "ftp_",
}

_lock = threading.RLock()


def extend_str_enum(enum_cls: type[enum.Enum], name: str, value: str | None = None) -> enum.Enum:
    """Add member ``name`` (value ``value``, default ``name``) to a ``str`` enum; return it.

    Idempotent: if the member exists it is returned unchanged. Works on the enum internals of
    CPython 3.10-3.13 (3.13's ``_add_member_`` where present). Pure standard library, so it can be
    checked on every interpreter without torch.
    """
    value = name if value is None else value
    with _lock:
        existing = enum_cls._member_map_.get(name)
        if existing is not None:
            if existing.value != value:
                raise ValueError(f"{enum_cls.__name__}.{name} already exists with value {existing.value!r}")
            return existing
        if value in enum_cls._value2member_map_:
            raise ValueError(f"{enum_cls.__name__} already has a member with value {value!r}")
        member = str.__new__(enum_cls, value)
        member._name_ = name
        member._value_ = value
        member.__objclass__ = enum_cls
        if hasattr(member, "_sort_order_"):
            member._sort_order_ = len(enum_cls._member_names_)
        add_member = getattr(enum_cls, "_add_member_", None)
        if add_member is not None:  # Python >= 3.13: sets the class attribute and the member map
            add_member(name, member)
        else:
            enum_cls._member_map_[name] = member
            # EnumMeta.__setattr__ refuses to rebind members; the name is new, but go around it.
            type.__setattr__(enum_cls, name, member)
        if name not in enum_cls._member_names_:
            enum_cls._member_names_.append(name)
        enum_cls._member_map_.setdefault(name, member)
        enum_cls._value2member_map_[value] = member
        return member


def ensure_peft_types() -> None:
    """Make ``PeftType.TWIN_TURBO``, ``MIXUP_BLO``, ``SPARSE_EXPERT`` and ``FTP`` exist."""
    from peft.utils import PeftType

    for name in METHOD_PREFIXES:
        extend_str_enum(PeftType, name.upper())


def register_method(name: str, config_cls: type, model_cls: type) -> None:
    """Register one hf_lowdata tuner with PEFT; safe to call more than once.

    Each method package calls this once from its ``__init__``. The prefix comes from
    :data:`METHOD_PREFIXES` and must equal ``model_cls.prefix``.
    """
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import PeftType, register_peft_method

    if name not in METHOD_PREFIXES:
        raise ValueError(f"Unknown hf_lowdata method {name!r}; known: {sorted(METHOD_PREFIXES)}")
    prefix = METHOD_PREFIXES[name]
    if getattr(model_cls, "prefix", None) != prefix:
        raise ValueError(f"{model_cls.__name__}.prefix must be {prefix!r}, got {getattr(model_cls, 'prefix', None)!r}")
    with _lock:
        ensure_peft_types()
        peft_type = PeftType(name.upper())
        registered_config = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
        if registered_config is not None:
            if registered_config is config_cls and PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is model_cls:
                return
            # A module reload (importlib.reload, some test runners) creates new class objects: replace.
            if registered_config.__qualname__ == config_cls.__qualname__:
                _unregister(peft_type)
            else:
                raise KeyError(f"PEFT type {peft_type.value} is already registered to {registered_config!r}")
        register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=prefix)
        install_model_card_note()


def _unregister(peft_type: Any) -> None:
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )

    for mapping in (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
        PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
    ):
        mapping.pop(peft_type, None)


#: Heading of the model-card section that says how to load one of our adapters.
LOADING_HEADING = "## Loading this adapter"
#: Text that marks a card as already saying it (this section, or the card ``hf-lowdata train`` writes).
_IMPORT_MARK = "import hf_lowdata"


def loading_note(peft_types: list[str]) -> str:
    """The model-card section for adapters of ``peft_types`` (e.g. ``["FTP"]``): install and import
    hf_lowdata before loading, or PEFT raises ``KeyError``."""
    kinds = ", ".join(f"`{t}`" for t in peft_types)
    return (
        f"{LOADING_HEADING}\n\n"
        f"This adapter's PEFT type ({kinds}) comes from [hf_lowdata](https://github.com/hf-lowdata/hf_lowdata), "
        "not from PEFT itself: install it (`pip install hf-lowdata`) and `import hf_lowdata` before loading the "
        "adapter with `PeftModel.from_pretrained`, `AutoPeftModelForSequenceClassification.from_pretrained` or "
        f"transformers' `load_adapter`. Without the import PEFT stops with `KeyError: '{peft_types[0]}'`.\n\n"
        "```python\n"
        "import hf_lowdata  # must come first: registers hf_lowdata's methods with PEFT\n"
        "from peft import PeftModel\n\n"
        "# base_model: the model the adapter was trained on (`base_model` in this card's metadata)\n"
        "model = PeftModel.from_pretrained(base_model, \"path/or/hub-id/of/this/adapter\")\n"
        "```\n"
    )


def add_loading_note(peft_model: Any, output_dir: str | os.PathLike) -> None:
    """Add :func:`loading_note` and the ``hf_lowdata`` tag to the card PEFT wrote in ``output_dir`` when
    ``peft_model`` holds one of our adapters; a card that already says to import hf_lowdata keeps its text."""
    ours = sorted({
        value for config in getattr(peft_model, "peft_config", {}).values()
        if (value := getattr(getattr(config, "peft_type", None), "value", None)) in _our_peft_types()
    })
    path = os.path.join(output_dir, "README.md")
    if not ours or not os.path.isfile(path):
        return
    from huggingface_hub import ModelCard

    card = ModelCard.load(path)
    card.data["tags"] = sorted({*(card.data.get("tags") or []), "hf_lowdata", *(t.lower() for t in ours)})
    if _IMPORT_MARK not in card.text:  # right under the title, where a reader of the Hub page starts
        lines = card.text.splitlines()
        at = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), 0)
        lines[at:at] = ["", loading_note(ours)]
        card.text = "\n".join(lines)
    card.save(path)


def _our_peft_types() -> set[str]:
    return {name.upper() for name in METHOD_PREFIXES}


def install_model_card_note() -> None:
    """Make ``PeftModel.create_or_update_model_card`` (called by ``save_pretrained`` and ``push_to_hub``) add
    :func:`add_loading_note` after PEFT's own card. Idempotent; other PEFT types' cards are unchanged."""
    from peft import PeftModel

    with _lock:
        original = PeftModel.create_or_update_model_card
        if getattr(original, "_hf_lowdata_note", False):
            return

        @functools.wraps(original)
        def create_or_update_model_card(self: Any, output_dir: str) -> None:
            original(self, output_dir)
            add_loading_note(self, output_dir)

        create_or_update_model_card._hf_lowdata_note = True  # type: ignore[attr-defined]
        PeftModel.create_or_update_model_card = create_or_update_model_card
