"""The command line: list parsing, option parsing, method listing, error exit codes."""

from __future__ import annotations

import argparse

import pytest

from hf_lowdata.cli import _float_list, _int_list, main, parse_options


def test_int_lists_accept_ranges_and_commas():
    assert _int_list("0-4") == [0, 1, 2, 3, 4]
    assert _int_list("0-2,8, 16") == [0, 1, 2, 8, 16]
    assert _float_list("0.1,0.3") == [0.1, 0.3]
    with pytest.raises(argparse.ArgumentTypeError, match="'4-0' is an empty range"):
        _int_list("4-0")  # was read as no seeds at all ("No seeds given")


def test_options_are_literals_where_they_parse():
    assert parse_options(["r=16", "lr=1e-3", "target_modules=['query','value']", "norm=mars"]) == {
        "r": 16, "lr": 1e-3, "target_modules": ["query", "value"], "norm": "mars"}
    with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
        parse_options(["r16"])


def test_methods_command_lists_baselines(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("probe", "full", "lora", "setfit"):
        assert name in out
    starts = {len(line) - len(line.split(None, 1)[1]) for line in out.splitlines()}
    assert len(starts) == 1  # the summaries line up, also after names longer than 16 characters


def test_methods_command_shows_what_a_method_needs(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_LOWDATA_DATA_DIR", raising=False)
    assert main(["methods"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "[needs setup: " in lines["sparse_expert"] and "HF_LOWDATA_DATA_DIR" in lines["sparse_expert"]
    assert "needs setup" not in lines["sparse_expert_pretrained"] and "needs setup" not in lines["lora"]
    monkeypatch.setenv("HF_LOWDATA_DATA_DIR", str(tmp_path))
    assert main(["methods"]) == 0
    assert "needs setup" not in capsys.readouterr().out


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    code = main(["bench", "--data-dir", str(tmp_path / "nope"), "--datasets", "a", "--methods", "probe",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "is not a folder" in capsys.readouterr().err


def test_train_takes_bf16_like_bench(monkeypatch, tmp_path):
    from hf_lowdata import workflow
    from tests.cli.outputs import toy_files

    seen: dict = {}

    def record(*args, **kwargs):
        seen.update(kwargs)
        raise workflow.WorkflowError("stopped by the test")

    monkeypatch.setattr(workflow, "train_method", record)
    files = toy_files(tmp_path / "data")
    assert main(["train", "--method", "probe", "--data", str(files["train"]), "--out", str(tmp_path / "o"),
                 "--bf16"]) == 2
    assert seen["bf16"] is True


@pytest.mark.parametrize("command", ["train", "bench"])
def test_writing_commands_refuse_to_run_as_several_processes(command, tmp_path, monkeypatch, capsys):
    """Under torchrun every process ran the whole command: they raced on one output folder."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out"
    argv = {"train": ["train", "--method", "probe", "--data", str(tmp_path / "x.csv"), "--out", str(out)],
            "bench": ["bench", "--data-dir", str(tmp_path), "--datasets", "a", "--methods", "probe", "--out", str(out)]}
    assert main(argv[command]) == 2
    assert "runs as one process, but it was started as 2" in capsys.readouterr().err
    assert not out.exists()


def test_the_cli_hides_only_peft_s_gradient_checkpointing_deprecation(tiny_bert_dir):
    """PEFT reads transformers' deprecated property on every get_peft_model; other warnings still show."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from hf_lowdata.cli import hide_upstream_deprecation_noise

    def future_warnings(hide: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:  # restores the process's filters afterwards
            warnings.simplefilter("always")
            if hide:
                hide_upstream_deprecation_noise()
            base = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
            get_peft_model(base, LoraConfig(task_type="SEQ_CLS", target_modules=["query"]))
            warnings.warn("another deprecation", FutureWarning, stacklevel=1)
        return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]

    assert any("is_gradient_checkpointing" in m for m in future_warnings(hide=False))  # the noise exists upstream
    shown = future_warnings(hide=True)
    assert shown == ["another deprecation"], shown


def test_bench_dev_k_takes_a_number_or_same(capsys):
    from hf_lowdata.cli import build_parser

    base = ["bench", "--data-dir", ".", "--datasets", "a", "--methods", "probe", "--out", "o"]
    assert build_parser().parse_args([*base, "--dev-k", "same"]).dev_k == "same"
    assert build_parser().parse_args([*base, "--dev-k", "8"]).dev_k == 8
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--dev-k", "half"])
    assert "expected a number of examples per class or 'same'" in capsys.readouterr().err


def test_own_warnings_print_like_errors_and_others_keep_their_format(monkeypatch):
    """A DataWarning printed as '/.../hf_lowdata/data.py:215: DataWarning: ...' plus the library's source line."""
    import warnings

    from hf_lowdata import cli
    from hf_lowdata.data import DataWarning

    fmt = cli.short_warning_format("train")
    own = fmt(DataWarning("mine.csv: 2 row(s) repeat"), DataWarning, "/elsewhere/x.py", 3, "source line")
    assert own == "hf-lowdata train: warning: mine.csv: 2 row(s) repeat\n"
    # another library's warning raised at a line of hf_lowdata (its stacklevel) keeps its category and origin
    inside = fmt(FutureWarning("torch.cuda.amp is deprecated"), FutureWarning, cli.__file__, 10)
    assert "FutureWarning: torch.cuda.amp is deprecated" in inside and "cli.py:10" in inside
    foreign = fmt(FutureWarning("old API"), FutureWarning, "/site-packages/peft/x.py", 7, "call()")
    assert foreign == warnings.formatwarning(FutureWarning("old API"), FutureWarning, "/site-packages/peft/x.py", 7,
                                             "call()")
    assert "peft/x.py:7" in foreign
    # main() installs it for the command and puts the process's own back afterwards
    seen = []
    before = warnings.formatwarning
    monkeypatch.setattr(cli, "_list_methods", lambda args: seen.append(warnings.formatwarning) or 0)
    assert cli.main(["methods"]) == 0
    assert seen[0] is not before and seen[0](DataWarning("x"), DataWarning, "f", 1).startswith("hf-lowdata methods:")
    assert warnings.formatwarning is before
