"""Method options (``--config key=value``) are read as what they must be: a bad value is a MethodConfigError naming
the method, the option, the value and an example, never a bare ``int()`` / ``float()`` failure, a silent truncation
(``r=2.5`` trained with r=2) or a string taken as a flag (``merge=no`` meant True)."""

from __future__ import annotations

import pytest
import torch

from hf_lowdata.budgets import Budget, get_budget
from hf_lowdata.cli import main
from hf_lowdata.data import DatasetSplits, TextDataset, load_data, make_few_shot_task
from hf_lowdata.methods import RunContext, get_method
from hf_lowdata.methods.base import (
    MethodConfigError,
    choice_option,
    flag_option,
    method_config,
    number_option,
)
from tests.cli.outputs import tiny_args, toy_files
from tests.helpers import toy_sentences

FAST = Budget(learning_rate=5e-3, epochs=1, min_steps=2, max_steps=2, batch_size=8)


def _task(k=8):
    rows = toy_sentences(60, 0)
    pool = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"), "toy")
    return make_few_shot_task(DatasetSplits("toy", ("neg", "pos"), pool), seed=0, k=k)


def _ctx(model, tmp_path, **options):
    return RunContext(model=model, seed=0, budget=FAST, work_dir=tmp_path, quiet=True, options=options)


# ---- the accessors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "limits", "expected"), [
    (8, {"whole": True, "low": 1}, 8),
    (8.0, {"whole": True, "low": 1}, 8),  # a whole number written as a float
    ("4", {"whole": True}, 4),
    (0.01, {}, 0.01),
    (1, {}, 1.0),
    (0.0, {"low": 0, "high": 1, "high_open": True}, 0.0),
])
def test_number_option_keeps_valid_values(value, limits, expected):
    got = number_option("m", "x", value, **limits)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(("value", "limits", "message"), [
    (2.5, {"whole": True, "low": 1}, "m: x must be a whole number >= 1, got 2.5"),
    ("abc", {}, "m: x must be a number, got 'abc'"),
    (True, {"whole": True}, "m: x must be a whole number, got True"),
    (float("nan"), {}, "m: x must be a number, got nan"),
    (float("inf"), {"low": 0}, "m: x must be a number >= 0, got inf"),
    (0, {"low": 0, "low_open": True}, "m: x must be a number above 0, got 0"),
    (1, {"low": 0, "high": 1, "high_open": True}, r"m: x must be a number in \[0, 1\), got 1"),
    (None, {}, "m: x must be a number, got None"),
])
def test_number_option_refuses_and_names_the_option(value, limits, message):
    with pytest.raises(MethodConfigError, match=message + r" \(e\.g\. --config \"x=.+\"\)\."):
        number_option("m", "x", value, **limits)


@pytest.mark.parametrize(("value", "expected"), [
    (True, True), (False, False), (1, True), (0, False), ("true", True), ("False", False), ("yes", True),
    ("NO", False), ("on", True), ("off", False), ("0", False), ("1", True),
])
def test_flag_option_reads_booleans_and_their_words(value, expected):
    assert flag_option("mixup_blo", "merge", value) is expected


@pytest.mark.parametrize("value", ["maybe", 2, 0.5, None, ""])
def test_flag_option_refuses_anything_else(value):
    with pytest.raises(MethodConfigError, match=rf"mixup_blo: merge must be true or false .*got {value!r} "
                                                r"\(e\.g\. --config \"merge=false\"\)"):
        flag_option("mixup_blo", "merge", value)


def test_choice_option():
    assert choice_option("ftp", "norm", "l2", ("mars", "l2")) == "l2"
    with pytest.raises(MethodConfigError, match=r"ftp: norm must be 'mars' or 'l2', got 'L2' "
                                                r"\(e\.g\. --config \"norm=mars\"\)"):
        choice_option("ftp", "norm", "L2", ("mars", "l2"))


def test_method_config_names_the_method_in_the_configs_own_error():
    from hf_lowdata.tuners.ftp import FTPConfig

    with pytest.raises(MethodConfigError, match=r"^ftp: FTPConfig.kappa must lie in \[0, 1\]"):
        method_config("ftp", FTPConfig, kappa=2.0)
    assert method_config("ftp", FTPConfig, kappa=0.5).kappa == 0.5


# ---- the methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    ({"mu": "abc"}, r"ftp_lora: mu must be a number, got 'abc' \(e\.g\. --config \"mu=0\.01\"\)"),
    ({"r": 2.5}, r"ftp_lora: r must be a whole number, got 2\.5"),
    ({"lora_alpha": "x"}, r"ftp_lora: lora_alpha must be a whole number, got 'x'"),
    ({"norm": "L2"}, r"ftp_lora: norm must be 'mars' or 'l2', got 'L2'"),
    ({"kappa": 2}, r"ftp_lora: FTPConfig.kappa must lie in \[0, 1\]"),  # the config's own check
    ({"r": 0}, r"ftp_lora: FTPConfig.r must be a positive integer"),
])
def test_ftp_options_are_method_config_errors(options, message, tiny_bert_dir, tmp_path):
    """mu=abc failed in float() as an "unexpected failure", r=2.5 trained with r=2, kappa=2 was a plain ValueError."""
    with pytest.raises(MethodConfigError, match=message):
        get_method("ftp_lora").build_model(_task(), _ctx(tiny_bert_dir, tmp_path, **options))


def test_ftp_truncates_no_rank_and_keeps_valid_options(tiny_bert_dir, tmp_path):
    """r=2.5 trained with r=2 (int()); valid values, the defaults among them, build the same config as before."""
    with pytest.raises(MethodConfigError, match=r"ftp_lora: r must be a whole number, got 2\.5"):
        get_method("ftp_lora").build_model(_task(), _ctx(tiny_bert_dir, tmp_path, r=2.5))
    config = get_method("ftp_lora").build_model(_task(), _ctx(tiny_bert_dir, tmp_path)).peft_config["default"]
    assert (config.r, config.lora_alpha, config.mu, config.kappa, config.norm) == (8, 8, 1e-2, 1.0, "mars")
    ctx = _ctx(tiny_bert_dir, tmp_path, r=4.0, lora_alpha="16", mu=1, kappa=0, norm="l2")
    config = get_method("ftp_lora").build_model(_task(), ctx).peft_config["default"]
    assert (config.r, config.lora_alpha, config.mu, config.kappa, config.norm) == (4, 16, 1.0, 0.0, "l2")
    assert type(config.r) is int and type(config.mu) is float


@pytest.mark.parametrize(("options", "message"), [
    ({"iterations": "x"}, r"tpgm: iterations must be a whole number >= 1, got 'x' \(e\.g\. --config \"iterations=1\"\)"),
    ({"interval": 0}, r"tpgm: interval must be a whole number >= 1, got 0"),
    ({"heldout_fraction": 1.5}, r"tpgm: heldout_fraction must be a number in \(0, 1\), got 1\.5"),
    ({"tpgm_lr": "fast"}, r"tpgm: tpgm_lr must be a number above 0, got 'fast'"),
])
def test_tpgm_objective_options_are_method_config_errors(options, message, tiny_bert_dir, tmp_path):
    with pytest.raises(MethodConfigError, match=message):
        get_method("tpgm").objective(_task(), _ctx(tiny_bert_dir, tmp_path, **options), None)


def test_tpgm_truncates_no_count_and_keeps_valid_options(tiny_bert_dir, tmp_path):
    with pytest.raises(MethodConfigError, match=r"tpgm: iterations must be a whole number >= 1, got 2\.5"):
        get_method("tpgm").objective(_task(), _ctx(tiny_bert_dir, tmp_path, iterations=2.5), None)
    objective = get_method("tpgm").objective(_task(), _ctx(tiny_bert_dir, tmp_path), None)
    assert (objective.heldout_fraction, objective.lr, objective.norm, objective.interval, objective.iterations) == (
        0.2, 1e-2, "mars", 1, 1)
    objective = get_method("tpgm").objective(_task(), _ctx(tiny_bert_dir, tmp_path, iterations=2.0, interval="3"), None)
    assert (objective.interval, objective.iterations) == (3, 2)


class _Stop(Exception):
    pass


def test_mixup_blo_merge_reads_false_words_as_false(tiny_bert_dir, tmp_path, monkeypatch):
    """merge=no and merge=false meant True (bool("no")): the model was merged although the user said not to."""
    from hf_lowdata.methods import mixup_blo

    monkeypatch.setattr(mixup_blo, "train_mixup_blo", lambda *args, **kwargs: torch.nn.Linear(2, 2))

    def classifier(*args, merge, **kwargs):
        raise _Stop(merge)

    monkeypatch.setattr(mixup_blo, "MixupBLOClassifier", classifier)
    expected = [(None, True), (True, True), (False, False), ("false", False), ("no", False), ("Off", False),
                ("yes", True), (0, False)]
    merged = []
    for value, _ in expected:
        options = {"folds": 1} if value is None else {"folds": 1, "merge": value}
        with pytest.raises(_Stop) as stop:
            get_method("mixup_blo").fit(_task(), _ctx(tiny_bert_dir, tmp_path, **options))
        merged.append((value, stop.value.args[0]))
    assert merged == expected


def test_mixup_blo_refuses_a_merge_that_is_not_a_flag_before_training(tiny_bert_dir, tmp_path, monkeypatch):
    from hf_lowdata.methods import mixup_blo

    def train(*args, **kwargs):
        raise AssertionError("trained before reading merge")

    monkeypatch.setattr(mixup_blo, "train_mixup_blo", train)
    with pytest.raises(MethodConfigError, match=r"mixup_blo: merge must be true or false .*got 'maybe'"):
        get_method("mixup_blo").fit(_task(), _ctx(tiny_bert_dir, tmp_path, merge="maybe"))


@pytest.mark.parametrize(("options", "message"), [
    ({"average_folds": "perhaps"}, r"mixup_blo: average_folds must be true or false .*got 'perhaps'"),
    ({"init_mean": "half"}, r"mixup_blo: init_mean must be a number, got 'half'"),
    ({"folds": 2.5}, r"mixup_blo: folds must be a whole number, got 2\.5"),
    ({"split_ratio": 1.5}, r"mixup_blo: split_ratio must be strictly between 0 and 1"),  # the config's own check
])
def test_mixup_blo_config_options_are_method_config_errors(options, message, tmp_path):
    with pytest.raises(MethodConfigError, match=message):
        get_method("mixup_blo").peft_config(_ctx(None, tmp_path, **options))


def test_mixup_blo_config_flags_read_words(tmp_path):
    """average_folds=no was kept as the string 'no', which is true: the folds were averaged anyway."""
    config = get_method("mixup_blo").peft_config(_ctx(None, tmp_path, average_folds="no", train_bias="on", folds=2.0))
    assert config.average_folds is False and config.train_bias is True and config.folds == 2
    default = get_method("mixup_blo").peft_config(_ctx(None, tmp_path))
    assert default.average_folds is True and default.folds == 5
    lora = get_method("mixup_blo_lora").peft_config(RunContext(work_dir=tmp_path))  # its budget's int: kept
    assert (lora.r, lora.lora_alpha) == (8, 8) and type(lora.lora_alpha) is int


@pytest.mark.parametrize(("options", "message"), [
    ({"dropout": "abc"}, r"twin_turbo: dropout must be a number, got 'abc' \(e\.g\. --config \"dropout="),
    ({"latent_weight": "lots"}, r"twin_turbo: latent_weight must be a number, got 'lots'"),
    ({"projector_dim": 2.5}, r"twin_turbo: projector_dim must be a whole number, got 2\.5"),
    ({"head": "softmax"}, r"twin_turbo: head must be one of"),  # the config's own check
    ({"dropout": 1.0}, r"twin_turbo: dropout must be in \[0, 1\)"),
])
def test_twin_turbo_config_options_are_method_config_errors(options, message, tmp_path):
    """dropout=abc failed in a comparison (TypeError, an "unexpected failure"); head=softmax was a plain ValueError."""
    from hf_lowdata.methods.twin_turbo import build_config

    with pytest.raises(MethodConfigError, match=message):
        build_config(_ctx(None, tmp_path, **options), {})


@pytest.mark.parametrize("options", [{"dropout": "abc"}, {"unlabelled_batch_size": 0}])
def test_twin_turbo_refuses_a_bad_option_before_computing_any_token_states(options, tiny_bert_dir, tmp_path,
                                                                          monkeypatch):
    """The config was checked only after every labelled and unlabelled text had passed the backbone."""
    from hf_lowdata.methods import twin_turbo

    def no_states(*args, **kwargs):
        raise AssertionError("token states computed before the options were checked")

    monkeypatch.setattr(twin_turbo, "text_token_states", no_states)
    with pytest.raises(MethodConfigError, match="twin_turbo: "):
        get_method("twin_turbo").fit(_task(), _ctx(tiny_bert_dir, tmp_path, **options))


def test_twin_turbo_valid_config_options_are_unchanged(tmp_path):
    from hf_lowdata.methods.twin_turbo import build_config

    config = build_config(_ctx(None, tmp_path, projector_dim=64.0, dropout=0, critic_lr=None), {"latent_weight": 0.0})
    assert (config.projector_dim, config.dropout, config.critic_lr, config.latent_weight) == (64, 0.0, None, 0.0)


def test_sparse_expert_options_are_refused_before_meta_training(tiny_bert_dir, toy_data_dir, tmp_path, monkeypatch):
    """r=2.5 fine-tuned with r=2 and router_temperature=abc failed after meta-training; target_sparsity=1.5 only
    inside it, as a plain ValueError."""
    from hf_lowdata.methods import sparse_expert

    def finetune(*args, **kwargs):
        raise AssertionError("fine-tuned with an option that should have been refused")

    monkeypatch.setattr(sparse_expert, "finetune_on_support", finetune)
    task = make_few_shot_task(load_data(toy_data_dir / "toya"), seed=0, k=4)
    for options, message in [({"r": 2.5}, r"sparse_expert_pretrained: r must be a whole number >= 1, got 2\.5"),
                             ({"lora_alpha": "x"}, r"sparse_expert_pretrained: lora_alpha must be a whole number"),
                             ({"router_temperature": "abc"},
                              r"sparse_expert_pretrained: router_temperature must be a number above 0, got 'abc'")]:
        with pytest.raises(MethodConfigError, match=message):
            get_method("sparse_expert_pretrained").fit(task, _ctx(tiny_bert_dir, tmp_path, **options))
    method = get_method("sparse_expert")
    common = {"bench_data_dir": str(toy_data_dir), "sources": "toyb"}
    for options, message in [
        ({"target_sparsity": 1.5}, r"sparse_expert: target_sparsity is the fraction of zeros per expert mask"),
        ({"num_experts": 2.5}, r"sparse_expert: num_experts must be a whole number, got 2\.5"),
        ({"meta_steps": "many"}, r"sparse_expert: meta_steps must be a whole number >= 1, got 'many'"),
        ({"binary_masks_from": 2}, r"sparse_expert: binary_masks_from must be a number in \[0, 1\], got 2"),
    ]:
        with pytest.raises(MethodConfigError, match=message):
            method.plan(task, _ctx(tiny_bert_dir, tmp_path, **common, **options))
    plan = method.plan(task, _ctx(tiny_bert_dir, tmp_path, **common, num_experts=4.0, meta_steps=3))
    assert plan.adapter["num_experts"] == 4 and plan.steps == 3 and plan.meta_batch == 4 and plan.learning_rate == 5e-4


def test_setfit_num_iterations_is_a_method_config_error():
    """The train command plans SetFit's steps from num_iterations before training: int('x') failed there."""
    steps, budget = get_method("setfit").planned_steps, get_budget("setfit")
    with pytest.raises(MethodConfigError, match=r"setfit: num_iterations must be a whole number >= 1, got 'x'"):
        steps(10, budget, {"num_iterations": "x"})
    assert steps(10, budget, {"num_iterations": 2.0}) == steps(10, budget, {"num_iterations": 2}) == 3


# ---- the command line ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "setting", "message"), [
    ("ftp_lora", "mu=abc", "ftp_lora: mu must be a number, got 'abc' (e.g. --config \"mu=0.01\")."),
    ("ftp_lora", "r=2.5", "ftp_lora: r must be a whole number, got 2.5"),
    ("ftp_lora", "kappa=2", "ftp_lora: FTPConfig.kappa must lie in [0, 1]"),
    ("tpgm", "iterations=x", "tpgm: iterations must be a whole number >= 1, got 'x'"),
    ("mixup_blo", "merge=maybe", "mixup_blo: merge must be true or false (or yes/no, on/off, 1/0), got 'maybe'"),
    ("twin_turbo", "dropout=abc", "twin_turbo: dropout must be a number, got 'abc'"),
])
def test_train_prints_a_bad_option_as_a_usage_error(method, setting, message, tiny_bert_dir, tmp_path, capsys):
    """These were "error: ValueError: could not convert string to float: 'abc' (an unexpected failure, ...)", exit 1,
    or trained with another value than the one given."""
    files = toy_files(tmp_path / "data")
    args = ["train", "--method", method, "--model", str(tiny_bert_dir), "--data", str(files["train"]),
            "--out", str(tmp_path / "out"), "--config", *tiny_args(method), setting]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"hf-lowdata train: error: {message}" in err
    assert "unexpected failure" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ---- a config that targets no module ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "ftp_lora", "twin_turbo", "mixup_blo_fast"])
def test_a_target_that_matches_no_module_names_the_layers_there_are(method, tiny_bert_dir, tmp_path, capsys):
    """PEFT's NoMatchingPeftModuleError reached the user as "an unexpected failure", exit 1, with no layer names."""
    files = toy_files(tmp_path / "data")
    args = ["train", "--method", method, "--model", str(tiny_bert_dir), "--data", str(files["train"]),
            "--out", str(tmp_path / "out"), "--config", *tiny_args(method), "target_modules=['nope']"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"hf-lowdata train: error: {method}: target_modules=['nope'] matches no module of this model." in err
    assert "Its Linear layers are named ['query', 'key', 'value', 'dense'" in err and "its head ['classifier']" in err
    assert "unexpected failure" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


# ---- every option, checked before any run ----------------------------------------------------------

#: Options that take any text, so no value is wrong before the model or the file system is read: layer names
#: (checked against the model's layers when it is built) and folders (created or read by the run).
FREE_TEXT_OPTIONS = frozenset({"target_modules", "modules_to_save", "exclude_modules", "backbone_module", "cache_dir",
                               "feature_cache_dir", "source_dir"})


def _every_method_option() -> list[tuple[str, str]]:
    from hf_lowdata.methods import METHODS

    # (a variant's fixed options are refused whatever their value: fixed_option_conflicts, tested with the bench)
    return [(name, option) for name in sorted(METHODS) for option in sorted(METHODS[name].known_options())
            if option not in FREE_TEXT_OPTIONS | set(METHODS[name].fixed_options())]


@pytest.mark.parametrize(("method", "option"), _every_method_option())
def test_check_options_refuses_a_bad_value_of_every_option(method, option, toy_data_dir, monkeypatch):
    """The benchmark and the demo call check_options for each method before the first run: an option whose value
    is first read inside fit would fail in every run of its method, after the other methods trained."""
    from hf_lowdata.data import DataError

    monkeypatch.setenv("HF_LOWDATA_DATA_DIR", str(toy_data_dir))
    defaults = RunContext(options={"sources": "toya,toyb"})
    if option != "sources":
        get_method(method).check_options(defaults)  # the defaults pass
    with pytest.raises((MethodConfigError, DataError)) as err:
        get_method(method).check_options(RunContext(options={"sources": "toya,toyb", option: "wrong?"}))
    assert option in str(err.value)


def test_options_a_method_never_reads_are_unknown_settings():
    """sparse_expert_pretrained listed the meta-training options, which it ignores; twin_turbo listed PEFT's own
    config fields (task_type, revision, ...) and the ones the model gives (num_labels), which the run overrides."""
    from hf_lowdata.methods.base import unknown_options

    assert unknown_options(["sparse_expert"], ["meta_steps", "sources"]) is None
    assert "Unknown setting 'meta_steps'" in unknown_options(["sparse_expert_pretrained"], ["meta_steps"])
    assert unknown_options(["sparse_expert_pretrained"], ["router_temperature", "r"]) is None
    for field_name in ("task_type", "revision", "num_labels", "token_dim"):
        assert f"Unknown setting '{field_name}'" in unknown_options(["twin_turbo"], [field_name])
    assert unknown_options(["twin_turbo"], ["projector_dim", "latent_weight"]) is None
