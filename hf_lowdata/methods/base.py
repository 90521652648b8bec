"""What a method is to the benchmark, the demo and the ``train`` command.

A :class:`Method` turns a :class:`~hf_lowdata.data.FewShotTask` into a :class:`FittedClassifier`
under a :class:`~hf_lowdata.budgets.Budget`. Methods register themselves by name in
:data:`METHODS`; the bench, the demo and the CLI only ever look names up there, so a new method is
one new module. Transformer methods (full fine-tuning, LoRA and every hf_lowdata PEFT method)
share :class:`TransformerMethod`: build a model, pick a training objective, train with the
:class:`~hf_lowdata.training.LowDataTrainer`, predict with length-sorted batches.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..budgets import BUDGETS, Budget, get_budget
from ..data import DataError, FewShotTask, as_example_text, split_pairs, tokenize
from ..inference import mean_pooled_embeddings, predict_logits
from ..models import load_encoder, load_tokenizer, resolve_model_path

ProgressFn = Callable[[str, float], None]


class RunCancelled(RuntimeError):
    """Raised inside training when the caller asked to stop (the demo's cancel button)."""


class MethodConfigError(ValueError):
    """A method's settings do not fit the model (e.g. no default ``target_modules`` for its type); the message
    names the option to set."""


# --------------------------------------------------------------------------------------------------
# Method options (``--config key=value``): read as what they must be, or a MethodConfigError naming them

#: How a flag option may be given (case-insensitive), besides True / False and 1 / 0: ``bool("no")`` was True.
FLAG_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def option_error(method: str, name: str, value: Any, expected: str, example: Any, meaning: str = "") -> MethodConfigError:
    """The message of every bad option value: the method, the option (and its ``meaning``), what it takes, the value
    given and an example setting."""
    label = f"{name} ({meaning})" if meaning else name
    shown = example if isinstance(example, str) else repr(example)
    return MethodConfigError(f"{method}: {label} must be {expected}, got {value!r} (e.g. --config \"{name}={shown}\").")


def number_option(method: str, name: str, value: Any, *, whole: bool = False, low: float | None = None,
                  high: float | None = None, low_open: bool = False, high_open: bool = False, example: Any = None,
                  meaning: str = "") -> Any:
    """Option ``name`` of ``method`` as a finite number (an ``int`` when ``whole``) within the bounds, which are
    inclusive unless ``low_open`` / ``high_open``; else a :class:`MethodConfigError` naming it.

    A string that reads as a number is that number, and a whole number given as ``8.0`` is ``8``; ``2.5`` for a whole
    number, ``True``, ``'abc'``, nan and inf are refused (``int()`` cut 2.5 to 2 and took True as 1; ``float('abc')``
    failed as an unexpected error). ``example`` (default: a bound) is the setting the message suggests.
    """
    try:
        if isinstance(value, (bool, np.bool_)):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = float("nan")
    ok = (np.isfinite(number) and (not whole or number.is_integer())
          and (low is None or (number > low if low_open else number >= low))
          and (high is None or (number < high if high_open else number <= high)))
    if not ok:
        if low is not None and high is not None:
            span = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            span = f" above {low:g}" if low_open else f" >= {low:g}"
        else:
            span = "" if high is None else f" below {high:g}" if high_open else f" <= {high:g}"
        if example is None:
            example = low if low is not None and not low_open else high if high is not None and not high_open else 1
        raise option_error(method, name, value, f"{'a whole number' if whole else 'a number'}{span}", example, meaning)
    if whole:
        return int(value) if isinstance(value, (int, np.integer)) else int(number)
    return number


def flag_option(method: str, name: str, value: Any) -> bool:
    """Option ``name`` of ``method`` as a flag: True / False, 1 / 0 or one of :data:`FLAG_WORDS` (true/false, yes/no,
    on/off, any case); anything else is a :class:`MethodConfigError` naming it."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in FLAG_WORDS:
        return FLAG_WORDS[value.strip().lower()]
    raise option_error(method, name, value, "true or false (or yes/no, on/off, 1/0)", "false")


def choice_option(method: str, name: str, value: Any, choices: Sequence[str], example: str | None = None) -> str:
    """Option ``name`` of ``method`` as one of the strings ``choices``, else a :class:`MethodConfigError` naming it."""
    if isinstance(value, str) and value in choices:
        return value
    quoted = [repr(c) for c in choices]
    expected = f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
    raise option_error(method, name, value, expected, choices[0] if example is None else example)


def _field_kind(annotation: Any) -> str:
    """``int``, ``float`` or ``bool`` for a dataclass field of that type (``None`` allowed or not), else ``""``; the
    annotation is a string under postponed annotations."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional["):-1]
    kinds = [part.strip() for part in text.split("|") if part.strip() != "None"]
    return kinds[0] if len(kinds) == 1 and kinds[0] in ("int", "float", "bool") else ""


def method_config(method: str, factory: Callable[..., Any], /, **values: Any) -> Any:
    """``factory(**values)`` for ``method``: a tuner config or objective built from the run's options.

    For a dataclass config, each value of an ``int``, ``float`` or ``bool`` field is first read as
    :func:`number_option` / :func:`flag_option` do (``average_folds=no`` is False, ``dropout=abc`` names the option
    instead of failing in a comparison; a number that is already right is passed on unchanged). A ``ValueError`` of
    the factory's own validation (``FTPConfig.kappa must lie in [0, 1]``) becomes a :class:`MethodConfigError` with
    the same message, prefixed with the method's name.
    """
    import dataclasses

    if dataclasses.is_dataclass(factory):
        fields = {f.name: f for f in dataclasses.fields(factory)}
        for name, value in values.items():
            kind = _field_kind(fields[name].type) if name in fields and value is not None else ""
            if kind == "bool":
                values[name] = flag_option(method, name, value)
            elif kind:
                default = fields[name].default
                example = None if default is dataclasses.MISSING else default
                number = number_option(method, name, value, whole=kind == "int", example=example)
                keep = kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool)
                values[name] = value if keep else number
    try:
        return factory(**values)
    except MethodConfigError:
        raise
    except ValueError as err:
        message = str(err)
        prefixed = message if message.lower().startswith(f"{method.lower()}:") else f"{method}: {message}"
        raise MethodConfigError(prefixed) from err


def no_target_error(method: str, model: torch.nn.Module, config: Any) -> MethodConfigError:
    """The error for a PEFT config of ``method`` whose ``target_modules`` match no module of ``model``: the names
    the model's layers do have, and what to set. PEFT's own error reached the user as an unexpected failure, with
    no names to choose from."""
    from transformers.pytorch_utils import Conv1D

    from ..models import head_modules
    from ..tuners.base import layer_names

    names = layer_names(model, (torch.nn.Linear, Conv1D))
    targets = getattr(config, "target_modules", None)
    shown = sorted(targets) if isinstance(targets, (set, frozenset)) else targets
    example = ", ".join(repr(n) for n in (names[:2] or ["query", "value"]))
    return MethodConfigError(
        f"{method}: target_modules={shown!r} matches no module of this model. Its Linear "
        f"layers are named {names[:12]}{' ...' if len(names) > 12 else ''} and its head {head_modules(model)}: set "
        f"--config \"target_modules=[{example}]\" to some of them, or leave target_modules out for the method's "
        "default.")


def adapt_model(method: str, model: torch.nn.Module, config: Any) -> torch.nn.Module:
    """``get_peft_model(model, config)`` for ``method``; a config that targets no module of ``model`` is a
    :class:`MethodConfigError` naming the layers it could target (:func:`no_target_error`)."""
    from peft import get_peft_model
    from peft.utils import NoMatchingPeftModuleError

    try:
        return get_peft_model(model, config)
    except NoMatchingPeftModuleError as err:
        raise no_target_error(method, model, config) from err


class SharedCache:
    """Work shared by all runs of one process: tokenizers, frozen encoders, frozen embeddings.

    The benchmark builds one per invocation, so the probe embeds a dataset's test set once, not
    once per run. Thread-safe (the demo runs methods from worker threads).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tokenizers: dict[str, Any] = {}
        self._encoders: dict[tuple[str, str], Any] = {}
        self._embeddings: dict[tuple[str, str, int], np.ndarray] = {}

    def tokenizer(self, model: str | os.PathLike | None) -> Any:
        key = str(resolve_model_path(model))
        with self._lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = load_tokenizer(key)
            return self._tokenizers[key]

    def encoder(self, model: str | os.PathLike | None, device: str | None = None) -> torch.nn.Module:
        """The frozen encoder on ``device`` (default: CUDA if available, else CPU, as training uses)."""
        path, where = str(resolve_model_path(model)), str(default_device(device))
        with self._lock:
            if (path, where) not in self._encoders:
                self._encoders[(path, where)] = load_encoder(path).to(where)
            return self._encoders[(path, where)]

    def embeddings(
        self, model: str | os.PathLike | None, texts: Sequence[str], max_length: int = 128, use_cache: bool = True,
        device: str | None = None,
    ) -> np.ndarray:
        """L2-normalised mean-pooled embeddings of the frozen encoder (on ``device``), memoised by content."""
        key = (str(resolve_model_path(model)), _texts_digest(texts), max_length)
        with self._lock:
            cached = self._embeddings.get(key) if use_cache else None
        if cached is not None:
            return cached
        values = mean_pooled_embeddings(self.encoder(model, device), self.tokenizer(model), texts,
                                        max_length=max_length)
        if use_cache:
            with self._lock:
                self._embeddings[key] = values
        return values


def _texts_digest(texts: Sequence[str]) -> str:
    """A digest of the list: each text prefixed with its length, so no text (one holding the separator,
    ``"a\\x1eb"``) digests like a list of others (``["a", "b"]``)."""
    h = hashlib.blake2b(digest_size=16)
    for t in texts:
        data = t.encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


@dataclass
class RunContext:
    """Everything a method needs besides the task.

    Args:
        model: model name or local folder (``None``: the packaged default).
        seed: seed of this run (model init, data order, dropout).
        budget: training budget; ``None`` takes the method's entry in :data:`~hf_lowdata.budgets.BUDGETS`.
        work_dir: a scratch folder the method may write to.
        cache: shared tokenizers / encoders / embeddings.
        options: method-specific overrides (``--config key=value``), merged over ``budget.options``.
        progress: called with (message, fraction done) during training.
        cancel: when set, training stops at the next step with :class:`RunCancelled`.
        device: torch device for training and inference (default: CUDA if available, else CPU).
        quiet: no per-step log lines (the benchmark shows one progress bar instead).
        checkpoint_dir: where transformer methods write Trainer checkpoints (``None``: a folder in
            ``work_dir``); ``hf-lowdata train`` puts them under its output folder.
        save_steps: write a checkpoint every this many optimizer steps (0: no checkpoints).
        resume: continue from the last complete checkpoint in ``checkpoint_dir`` when there is one.
        bf16: train transformer methods under bf16 autocast (Trainer's ``bf16=True``; weights and
            optimizer state stay fp32). For GPUs with bf16 support; methods with their own training
            loop (the probe, SparseExpert's meta-training) ignore it.
    """

    model: str | os.PathLike | None = None
    seed: int = 0
    budget: Budget | None = None
    work_dir: Path = field(default_factory=lambda: Path.cwd() / ".hf_lowdata_work")
    cache: SharedCache = field(default_factory=SharedCache)
    options: dict[str, Any] = field(default_factory=dict)
    progress: ProgressFn | None = None
    cancel: threading.Event | None = None
    device: str | None = None
    quiet: bool = False
    checkpoint_dir: Path | None = None
    save_steps: int = 0
    resume: bool = False
    bf16: bool = False

    def budget_for(self, method: str) -> Budget:
        return self.budget if self.budget is not None else get_budget(method)

    def option(self, method: str, name: str, default: Any = None) -> Any:
        if name in self.options:
            return self.options[name]
        return self.budget_for(method).options.get(name, default)

    def number_option(self, method: str, name: str, default: Any, **limits: Any) -> Any:
        """:meth:`option` read by :func:`number_option` (``whole``, ``low``, ``high``, ... as there; the default is
        the message's example)."""
        return number_option(method, name, self.option(method, name, default), **{"example": default, **limits})

    def flag_option(self, method: str, name: str, default: bool) -> bool:
        """:meth:`option` read by :func:`flag_option`."""
        return flag_option(method, name, self.option(method, name, default))

    def choice_option(self, method: str, name: str, default: str, choices: Sequence[str]) -> str:
        """:meth:`option` read by :func:`choice_option`."""
        return choice_option(method, name, self.option(method, name, default), choices, example=default)


class FittedClassifier(ABC):
    """A trained classifier: predicts, counts its trainable parameters, saves itself.

    ``predict`` and ``predict_proba`` take texts, or for a model trained on pairs ``(text, text_pair)`` tuples (or
    texts joined by :data:`~hf_lowdata.data.PAIR_SEPARATOR`); every subclass's ``predict_proba`` receives them as
    joined strings, all of one kind: the kind it was trained on (``text_pairs``, set by :meth:`Method.fit` and by
    :func:`~hf_lowdata.workflow.load_classifier` from the card; ``None``: not known, not checked).
    """

    text_pairs: bool | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("predict_proba")
        if own is not None and not getattr(own, "_reads_pairs", False):
            @functools.wraps(own)
            def predict_proba(self, texts: Sequence[Any], *args: Any, **options: Any) -> np.ndarray:
                return own(self, self.examples(texts), *args, **options)

            predict_proba._reads_pairs = True  # type: ignore[attr-defined]
            cls.predict_proba = predict_proba  # type: ignore[method-assign]

    def examples(self, texts: Sequence[Any]) -> list[str]:
        """``texts`` as the joined strings a ``predict_proba`` reads, checked: all pairs or all single texts, and
        the kind this classifier was trained on (a pair model given single texts would answer, wrongly)."""
        if isinstance(texts, str):
            raise TypeError("texts is one string; pass a list of texts ([text]), or each character is read as a text.")
        joined = [as_example_text(t) for t in texts]
        pairs = split_pairs(joined)[1] is not None  # a mix is an error here, before any feature cache is read
        if joined and self.text_pairs is not None and pairs != self.text_pairs:
            raise DataError(
                "This classifier was trained on pairs of texts: give both texts of each example, as (text, text_pair) "
                "tuples (hf-lowdata predict: --text-pair, or a file with a text_pair column)." if self.text_pairs else
                "This classifier was trained on single texts, and these examples are pairs: give one text each.")
        return joined

    label_names: tuple[str, ...]
    trainable_parameters: int
    #: True when predictions reuse memoised features (the probe): the benchmark then times
    #: inference on a sample with ``use_cache=False`` so the figure is the real cost.
    caches_features: bool = False
    #: Median seconds of one training step and of the optimizer's ``step()`` alone (transformer
    #: methods; ``None`` where not measured). The benchmark records both.
    train_step_seconds: float | None = None
    optimizer_step_seconds: float | None = None

    @property
    def notes(self) -> dict[str, Any]:
        """Facts about the fit worth recording (e.g. dev-set model selection), JSON-serialisable."""
        if "_notes" not in self.__dict__:
            self._notes: dict[str, Any] = {}
        return self._notes

    @abstractmethod
    def predict_proba(self, texts: Sequence[str], use_cache: bool = True) -> np.ndarray:
        """Class probabilities, shape (len(texts), num_labels)."""

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_proba(texts).argmax(axis=1)

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> Path:
        """Write what is needed to reuse this classifier (safetensors only); return the folder."""

    def to(self, device: str | torch.device) -> FittedClassifier:
        """Predict on ``device`` from now on (``hf-lowdata predict --device``); returns ``self``."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot move to {device}: give it a to(device) method that moves the modules it "
            "predicts with (and returns self)."
        )


#: Option of the methods that train a classifier on a loss: how it weights classes (:meth:`Method.class_weights`).
CLASS_WEIGHT_OPTION = "class_weight"
CLASS_WEIGHT_CHOICES = ("balanced", "none")


def class_weights_note(weights: torch.Tensor | None) -> dict[str, Any]:
    """The record of a fit's class weights (the benchmark's record then says what the loss was); none: empty."""
    return {} if weights is None else {"class_weights": [round(w, 4) for w in weights.tolist()]}


class Method(ABC):
    """A way of training a classifier from a few labelled examples."""

    #: Registry name (``--methods`` value).
    name: ClassVar[str]
    #: One line for the demo and ``--help``.
    summary: ClassVar[str]
    #: Paper the method comes from, if any.
    paper: ClassVar[str] = ""
    #: Whether the method reads the unlabelled pool.
    uses_unlabelled: ClassVar[bool] = False
    #: The :data:`~hf_lowdata.budgets.BUDGETS` entry it trains with; empty: its own ``name``.
    #: Ablation variants share their method's (``twin_turbo_ce`` trains with ``twin_turbo``'s).
    budget_name: ClassVar[str] = ""
    #: Method options (``--config key=value``) it reads besides its budget's ``options`` (and the
    #: Budget fields, which the train command and the demo apply): a key no chosen method reads is
    #: an error, not silently ignored (:func:`unknown_options`).
    option_names: ClassVar[frozenset[str]] = frozenset()
    #: The :class:`~hf_lowdata.budgets.Budget` fields it trains with (``None``: every one); the train command
    #: notes the others as ignored and the model card leaves them out.
    budget_fields: ClassVar[frozenset[str] | None] = None
    #: Whether :meth:`fit` writes Trainer checkpoints to ``ctx.checkpoint_dir`` and resumes from them
    #: (``ctx.resume``); the train command makes no checkpoint folder for a method that does not.
    checkpoints: ClassVar[bool] = False
    #: ``class_weight`` when the run gives none (methods that read the option): chosen per method on dev splits.
    default_class_weight: ClassVar[str] = "none"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("fit")
        if own is not None and not getattr(own, "_records_kind", False):
            @functools.wraps(own)
            def fit(self, task: FewShotTask, ctx: RunContext) -> FittedClassifier:
                classifier = own(self, task, ctx)
                classifier.text_pairs = task.labelled.pairs  # what it predicts on is checked against this
                return classifier

            fit._records_kind = True  # type: ignore[attr-defined]
            cls.fit = fit  # type: ignore[method-assign]

    @classmethod
    def budget_key(cls) -> str:
        """The :data:`~hf_lowdata.budgets.BUDGETS` entry this method trains with."""
        return cls.budget_name or cls.name

    @classmethod
    def data_dir_datasets(cls, options: Mapping[str, Any]) -> list[str]:
        """Datasets of the benchmark's data folder the method reads besides the task's (SMAT's meta-training
        sources), given the run's options: a benchmark resume checks their files as it checks the task's."""
        return []

    @classmethod
    def fixed_options(cls) -> Mapping[str, Any]:
        """Option values that define this method (an ablation's switched-off term, a variant's fold count): a
        ``--config`` value for one of them would be overridden, so :func:`fixed_option_conflicts` refuses it."""
        return {}

    @classmethod
    def known_options(cls) -> frozenset[str]:
        """Every method option it reads: :attr:`option_names` and its budget's ``options``."""
        budget = BUDGETS.get(cls.budget_key())
        return cls.option_names | frozenset(budget.options if budget is not None else ())

    def check_options(self, ctx: RunContext) -> None:
        """Read every option value the method takes (``ctx.options`` over its budget's) as :meth:`fit` reads it,
        raising :class:`MethodConfigError` for a bad one. The benchmark calls it for each method before its first
        run, so a typo fails at once instead of in every run of the method, after the other methods trained.
        Values that need the model (``target_modules``: its layer names) are checked when the model is built.
        Subclasses that read options extend it, sharing the reading code with :meth:`fit`."""
        if CLASS_WEIGHT_OPTION in self.known_options():
            self.class_weight_choice(ctx)

    def class_weight_choice(self, ctx: RunContext) -> str:
        """The ``class_weight`` option: ``balanced`` or ``none`` (default :attr:`default_class_weight`)."""
        # (the budget's own options under the budget's name: a variant such as twin_turbo_ce has none of its own)
        given = ctx.option(self.budget_key(), CLASS_WEIGHT_OPTION, self.default_class_weight)
        return choice_option(self.name, CLASS_WEIGHT_OPTION, given, CLASS_WEIGHT_CHOICES, "balanced")

    def class_weights(self, task: Any, ctx: RunContext) -> torch.Tensor | None:
        """The loss weight of each class, for methods that read option ``class_weight``: ``balanced`` weights classes
        to count alike (``n / (K n_c)``; ``None``, the plain loss, on a balanced labelled set), ``none`` trains on
        the plain loss. The default (:attr:`default_class_weight`) is ``none`` for the fine-tuning methods: on
        SST-5's dev split at its class frequencies, weighting raised macro-F1 by 5-10 points but cost up to 6.5
        points of accuracy (BENCHMARKS.md, "Class weights")."""
        from ..training import balanced_class_weights

        if self.class_weight_choice(ctx) == "none":
            return None
        weights = balanced_class_weights([int(y) for y in task.labelled.labels], task.num_labels)
        return None if bool((weights == 1).all()) else weights  # (a balanced set trains exactly as it did before)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the method cannot run here (a missing optional package), or ``None``."""
        return None

    def planned_steps(self, num_examples: int, budget: Budget, options: Mapping[str, Any]) -> int:
        """Optimizer steps a run on ``num_examples`` labelled examples trains (model card, checkpoint spacing);
        ``options`` are the run's method options."""
        return budget.steps(num_examples)

    @classmethod
    def missing_requirements(cls, options: Mapping[str, Any] | None = None) -> str | None:
        """Why the method cannot run with these ``options`` (``--config``) and environment, or ``None``.

        Unlike :meth:`unavailable_reason` (a missing package), this is a setting the user can give,
        e.g. a folder of source datasets; the reason is one line saying how. Default: nothing needed.
        """
        return None

    @abstractmethod
    def fit(self, task: FewShotTask, ctx: RunContext) -> FittedClassifier:
        """Train on ``task.labelled`` (and ``task.unlabelled`` if used); return the classifier."""


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise KeyError(f"A method named {cls.name!r} is already registered ({METHODS[cls.name]!r}).")
    METHODS[cls.name] = cls
    return cls


def unlabelled_pool_size(method: str, requested: int) -> int:
    """The unlabelled pool a benchmark run of ``method`` gets: ``requested`` for a method that uses
    unlabelled data, 0 for the others (their records then do not claim a pool they never saw)."""
    return requested if getattr(METHODS.get(method), "uses_unlabelled", False) else 0


def get_method(name: str) -> Method:
    """An instance of the registered method ``name``; a clear error lists the available ones."""
    if name not in METHODS:
        raise KeyError(f"Unknown method {name!r}. Available methods: {', '.join(available_methods())}.")
    reason = METHODS[name].unavailable_reason()
    if reason:
        raise RuntimeError(f"Method {name!r} is not available here: {reason}")
    return METHODS[name]()


def unknown_options(methods: Sequence[str], keys: Sequence[str], also_known: Sequence[str] = ()) -> str | None:
    """A message naming the ``--config`` keys that none of ``methods`` reads, or ``None``.

    ``also_known`` are keys the caller itself applies (the Budget fields). The message suggests close
    spellings and lists what each method reads, so a typo (``lerning_rate``) is caught before any
    training instead of being silently ignored.
    """
    import difflib

    known = {m: METHODS[m].known_options() for m in methods if m in METHODS}
    everything = sorted(set(also_known).union(*known.values()))
    unknown = [k for k in keys if k not in everything]
    if not unknown:
        return None
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, everything, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    reads = "; ".join(f"{m}: {', '.join(sorted(o)) or 'no options'}" for m, o in known.items())
    common = f" Budget settings: {', '.join(sorted(also_known))}." if also_known else ""
    return (f"Unknown setting {', '.join(hints)}: no chosen method reads it. Method options: {reads}.{common}")


#: What to do about a setting a chosen variant fixes, where one config applies to every chosen method (bench, demo).
SEPARATE_RUN_REMEDY = "Leave the setting out, or run that method separately, without it."


def fixed_option_conflicts(methods: Sequence[str], config: Mapping[str, Any],
                           remedy: str = SEPARATE_RUN_REMEDY) -> str | None:
    """A message naming the ``config`` values that one of ``methods`` fixes to another value, then ``remedy``; or
    ``None``.

    ``sparse_expert_m4`` is SMAT with 4 experts: ``--config num_experts=8`` would be silently overridden for it, and
    its results read as 8 experts'.
    """
    clashes = [f"{m} is defined by {key}={value!r}" for m in methods if m in METHODS
               for key, value in METHODS[m].fixed_options().items() if key in config and config[key] != value]
    if not clashes:
        return None
    return f"{'; '.join(clashes)}, so the setting would be ignored there. {remedy}"


def require_heldout_examples(task: FewShotTask, method: str, purpose: str, instead: str) -> None:
    """Refuse, with what to do, a labelled set in which no class has two examples: a method that holds out part of
    each class (MixupBLO's search folds, TPGM's radii) keeps every single example for training and has nothing to
    hold out. ``purpose`` says what the held-out part is for, ``instead`` names a method that needs none."""
    counts = task.labelled.class_counts()
    if task.labelled.labels is not None and max(counts.values(), default=0) < 2:
        raise DataError(
            f"{method} holds out part of each class's labelled examples {purpose}, but every class has at most one "
            f"({len(task.labelled)} examples, {len(counts)} classes). Give at least 2 examples per class (--shots 2 "
            f"or more), or use {instead}."
        )


def available_methods() -> list[str]:
    return sorted(METHODS)


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def directory_bytes(directory: str | os.PathLike) -> int:
    """Bytes of all files below ``directory``."""
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def default_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------------
# Transformer methods


class TransformerClassifier(FittedClassifier):
    """A (PEFT or plain) sequence-classification model with its tokenizer."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, label_names: Sequence[str], max_length: int) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.label_names = tuple(label_names)
        self.max_length = max_length
        self.trainable_parameters = count_trainable(model)

    def to(self, device: str | torch.device) -> TransformerClassifier:
        self.model.to(device)
        return self

    def predict_proba(self, texts: Sequence[str], use_cache: bool = True) -> np.ndarray:
        logits = predict_logits(self.model, self.tokenizer, texts, max_length=self.max_length)
        return torch.softmax(torch.from_numpy(logits), dim=-1).numpy()

    def save(self, directory: str | os.PathLike) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, safe_serialization=True)
        return out


def _run_callback(ctx: RunContext, label: str):
    """A TrainerCallback that reports progress, honours cancellation and times the steps."""
    import time

    from transformers import TrainerCallback

    class RunCallback(TrainerCallback):
        def __init__(self) -> None:
            self.step_seconds: list[float] = []
            self.optimizer_seconds: list[float] = []
            self._t_step = self._t_opt = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._t_step = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self._t_opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            self.optimizer_seconds.append(time.perf_counter() - self._t_opt)

        def on_step_end(self, args, state, control, **kwargs):
            self.step_seconds.append(time.perf_counter() - self._t_step)
            if ctx.cancel is not None and ctx.cancel.is_set():
                raise RunCancelled(f"{label}: cancelled at step {state.global_step}")
            if ctx.progress is not None and state.max_steps:
                ctx.progress(f"{label}: step {state.global_step}/{state.max_steps}", state.global_step / state.max_steps)
            return control

    return RunCallback()


#: Dev scores of a checkpointed run (:func:`dev_selection_callback`), beside its checkpoints.
DEV_SELECTION_LOG = "dev_selection.json"


class DevSelector:
    """Model selection on the task's dev set: the same rule for every method that trains in steps.

    Dev accuracy is scored at 5 evenly spaced steps (and the last); the trainable parameters at the
    best step are kept (ties go to the later step) and :meth:`restore` puts them back. ``dev_logits``
    scores a model on the dev examples (raw texts, cached features: whatever the method predicts from).
    """

    def __init__(self, dev_labels: Sequence[int], dev_logits: Callable[[torch.nn.Module], np.ndarray],
                 max_steps: int) -> None:
        self.labels = np.asarray(dev_labels)
        self.dev_logits = dev_logits
        self.max_steps = max_steps
        self.every = max(1, max_steps // 5)
        self.best_accuracy = -1.0
        self.best_step = 0
        self.snapshot: dict[str, torch.Tensor] = {}

    def due(self, step: int) -> bool:
        """Whether ``step`` (counted from 1) is scored."""
        return step % self.every == 0 or step == self.max_steps

    def observe(self, step: int, model: torch.nn.Module) -> tuple[float, bool]:
        """Score ``model`` after ``step``; returns (dev accuracy, whether it is the new best)."""
        acc = float((self.dev_logits(model).argmax(1) == self.labels).mean())
        improved = acc >= self.best_accuracy
        if improved:
            self.best_accuracy, self.best_step = acc, step
            self.snapshot = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return acc, improved

    def restore(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.snapshot:
                    param.copy_(self.snapshot[name].to(param.device, param.dtype))


def dev_selection_callback(dev_labels: Sequence[int], dev_logits: Callable[[torch.nn.Module], np.ndarray],
                           max_steps: int):
    """A :class:`DevSelector` as a TrainerCallback (call its ``restore(model)`` after training).

    When the run writes checkpoints, every score and each new best copy are written beside them
    (``dev_selection.json``, ``dev_best-STEP.safetensors``), so a run resumed from checkpoint N
    selects exactly as an uninterrupted one: the scores up to step N are read back, later ones are
    measured again.
    """
    from safetensors.torch import load_file, save_file
    from transformers import TrainerCallback

    class DevSelection(TrainerCallback, DevSelector):
        def __init__(self) -> None:
            DevSelector.__init__(self, dev_labels, dev_logits, max_steps)
            self._folder: Path | None = None
            self._scores: list[dict[str, float]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self._folder = Path(args.output_dir) if args.save_strategy != "no" else None
            log = self._folder / DEV_SELECTION_LOG if self._folder is not None else None
            if log is None or state.global_step == 0 or not log.is_file():
                return control
            self._scores = [r for r in json.loads(log.read_text()) if r["step"] <= state.global_step]
            if self._scores:  # resumed: the best of the scores up to the checkpoint, ties to the later step
                best = max(self._scores, key=lambda r: (r["accuracy"], r["step"]))
                self.best_accuracy, self.best_step = best["accuracy"], int(best["step"])
                self.snapshot = load_file(str(self._folder / f"dev_best-{self.best_step}.safetensors"))
            return control

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if model is None or not self.due(state.global_step):
                return control
            acc, improved = self.observe(state.global_step, model)
            if self._folder is not None and state.is_world_process_zero:  # the copy first, then its score
                self._folder.mkdir(parents=True, exist_ok=True)
                if improved:
                    target = self._folder / f"dev_best-{state.global_step}.safetensors"
                    save_file({k: v.contiguous().cpu() for k, v in self.snapshot.items()}, str(target) + ".tmp")
                    os.replace(str(target) + ".tmp", target)
                self._scores = [r for r in self._scores if r["step"] < state.global_step]
                self._scores.append({"step": state.global_step, "accuracy": acc})
                log = self._folder / DEV_SELECTION_LOG
                (log.with_name(log.name + ".tmp")).write_text(json.dumps(self._scores))
                os.replace(log.with_name(log.name + ".tmp"), log)
            return control

    return DevSelection()


def text_dev_logits(tokenizer: Any, texts: Sequence[str], max_length: int) -> Callable[[torch.nn.Module], np.ndarray]:
    """``dev_logits`` for a sequence-classification model scored on raw dev texts."""
    return lambda model: predict_logits(model, tokenizer, texts, max_length=max_length)


def _median(values: Sequence[float]) -> float | None:
    return float(np.median(values)) if values else None


def load_base_classifier(task: Any, ctx: RunContext) -> torch.nn.Module:
    """A pretrained model with a new head for ``task``'s labels, seeded by the run: ``ctx.model`` for a text
    task, the packaged EfficientNet-Lite0 for an image task (:class:`~hf_lowdata.vision.ImageFewShotTask`)."""
    from ..vision.data import ImageFewShotTask

    if isinstance(task, ImageFewShotTask):
        from ..vision.efficientnet import load_efficientnet_lite0

        return load_efficientnet_lite0(task.num_labels, list(task.label_names), seed=ctx.seed)
    from ..models import load_for_classification

    return load_for_classification(ctx.model, task.num_labels, list(task.label_names), seed=ctx.seed)


class TransformerMethod(Method):
    """Fine-tune a sequence-classification model with the LowDataTrainer.

    Subclasses override :meth:`build_model` (wrap with a PEFT config) and, when training differs,
    :meth:`objective`; :meth:`training_overrides` adjusts TrainingArguments.
    """

    checkpoints = True
    #: Options every backbone-training method reads besides its own :attr:`option_names`.
    common_option_names: ClassVar[frozenset[str]] = frozenset({CLASS_WEIGHT_OPTION})

    @classmethod
    def known_options(cls) -> frozenset[str]:
        return super().known_options() | cls.common_option_names

    def build_model(self, task: FewShotTask, ctx: RunContext) -> torch.nn.Module:
        """The model to train: the base classifier, which subclasses wrap (PEFT config)."""
        return load_base_classifier(task, ctx)

    def objective(self, task: FewShotTask, ctx: RunContext, model: torch.nn.Module):
        """The training objective; ``None`` is plain supervised training."""
        return None

    def training_overrides(self, task: FewShotTask, ctx: RunContext) -> dict[str, Any]:
        return {}

    def make_trainer(self, task: Any, ctx: RunContext, model: torch.nn.Module, train: Any, data_collator: Any,
                     processing_class: Any = None, unlabelled: Any = None, output_dir: Path | None = None):
        """The LowDataTrainer for ``model`` on the prepared ``train`` dataset, under this method's budget,
        objective and overrides; returns ``(trainer, run_callback)``. Shared by text (:meth:`fit`) and
        image tasks (:func:`hf_lowdata.vision.finetune.fit_image_classifier`)."""
        from ..training import LowDataTrainer, few_shot_training_args

        budget = ctx.budget_for(self.name)
        device = default_device(ctx.device)
        overrides = {"use_cpu": device.type == "cpu", "bf16": ctx.bf16, **self.training_overrides(task, ctx)}
        if ctx.save_steps > 0:
            overrides.update(save_strategy="steps", save_steps=ctx.save_steps, save_total_limit=2)
        output_dir = output_dir or Path(ctx.work_dir) / f"{self.name}-seed{ctx.seed}"
        args = few_shot_training_args(str(output_dir), budget, len(task.labelled), ctx.seed, **overrides)
        run_callback = _run_callback(ctx, self.name)
        trainer = LowDataTrainer(
            model=model,
            args=args,
            train_dataset=train,
            data_collator=data_collator,
            processing_class=processing_class,
            objective=self.objective(task, ctx, model),
            unlabeled_dataset=unlabelled,
            callbacks=[run_callback],
            class_weights=self.class_weights(task, ctx),
        )
        if ctx.quiet:
            from transformers.trainer_callback import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        return trainer, run_callback

    def fit(self, task: FewShotTask, ctx: RunContext) -> FittedClassifier:
        from ..data import collator
        from ..training import last_complete_checkpoint

        budget = ctx.budget_for(self.name)
        tokenizer = ctx.cache.tokenizer(ctx.model)
        model = self.build_model(task, ctx)
        train = tokenize(task.labelled, tokenizer, max_length=budget.max_length)
        unlabelled = None
        if self.uses_unlabelled and task.unlabelled is not None:
            unlabelled = tokenize(task.unlabelled, tokenizer, max_length=budget.max_length)
        output_dir = ctx.checkpoint_dir or Path(ctx.work_dir) / f"{self.name}-seed{ctx.seed}"
        trainer, run_callback = self.make_trainer(task, ctx, model, train, collator(tokenizer), tokenizer,
                                                  unlabelled, output_dir)
        dev_selection = None
        if task.dev is not None:
            dev_selection = dev_selection_callback(task.dev.labels, text_dev_logits(tokenizer, task.dev.texts, budget.max_length),
                                                   budget.steps(len(task.labelled)))
            trainer.add_callback(dev_selection)
        resume = ctx.resume and last_complete_checkpoint(output_dir) is not None
        trainer.train(resume_from_checkpoint=True if resume else None)
        if dev_selection is not None:
            dev_selection.restore(trainer.model)
        fitted = TransformerClassifier(trainer.model, tokenizer, task.label_names, budget.max_length)
        if dev_selection is not None:
            fitted.notes.update(dev_accuracy=dev_selection.best_accuracy, selected_step=dev_selection.best_step)
        fitted.notes.update(class_weights_note(trainer.class_weights))
        fitted.train_step_seconds = _median(run_callback.step_seconds)
        fitted.optimizer_step_seconds = _median(run_callback.optimizer_seconds)
        return fitted

