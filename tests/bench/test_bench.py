"""The benchmark harness: outputs, resume after a kill, clear errors, the summary's arithmetic."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from hf_lowdata.bench import BenchConfig, BenchError, plan_runs, read_records, run_benchmark, summary_markdown
from hf_lowdata.bench.results import append_record
from hf_lowdata.cli import main


def _config(toy_data_dir, tiny_bert_dir, out, **kw):
    base = dict(data_dir=toy_data_dir, datasets=["toya"], methods=["probe", "lora"], out=out, shots=[4],
                seeds=[0, 1], model=str(tiny_bert_dir), options={})
    base.update(kw)
    return BenchConfig(**base)


@pytest.fixture(autouse=True)
def _fast_budgets(monkeypatch):
    from hf_lowdata import budgets

    fast = {k: (v if k == "probe" else budgets.Budget(learning_rate=1e-3, epochs=1, min_steps=3, max_steps=3, batch_size=4))
            for k, v in budgets.BUDGETS.items()}
    monkeypatch.setattr(budgets, "BUDGETS", fast)


def test_bench_writes_runs_summary_plots(toy_data_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    records = run_benchmark(_config(toy_data_dir, tiny_bert_dir, out, ood_datasets=["toyb"]), show_progress=False)
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    r = records[0]
    for field in ("dataset", "method", "k", "seed", "accuracy", "macro_f1", "ood_accuracy", "train_seconds",
                  "inference_seconds_per_1k", "peak_rss_mb", "trainable_params", "adapter_bytes", "versions"):
        assert field in r, field
    assert set(r["versions"]) >= {"torch", "transformers", "peft"}
    assert set(r["ood_accuracy"]) == {"toyb"} and r["labelled_examples"] == 8
    summary = (out / "summary.md").read_text()
    assert "| toya | lora | k=4 |" in summary and "Out-of-domain" in summary
    assert (out / "plots" / "accuracy_vs_k_toya.png").stat().st_size > 1000
    assert (out / "plots" / "accuracy_vs_train_time.png").is_file()


def test_resume_skips_finished_and_redoes_a_cut_run(toy_data_dir, tiny_bert_dir, tmp_path):
    out = tmp_path / "out"
    config = _config(toy_data_dir, tiny_bert_dir, out, methods=["probe"], seeds=[0, 1, 2])
    run_benchmark(config, show_progress=False)
    runs = out / "runs.jsonl"
    lines = runs.read_text().splitlines()
    # simulate a kill: the last record was cut half-way through its write
    runs.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    assert len(read_records(runs)) == 2
    with pytest.raises(BenchError, match="already holds results. Pass --resume"):
        run_benchmark(config, show_progress=False)
    config.resume = True
    seen = []
    records = run_benchmark(config, show_progress=False, on_record=seen.append)
    assert [r["seed"] for r in seen] == [2]  # only the cut run was redone
    assert sorted(r["seed"] for r in records) == [0, 1, 2]
    assert all(json.loads(line) for line in runs.read_text().splitlines())
    # resuming with another method option would average runs of two settings in one summary row
    config.options = {"C": 0.0001}
    with pytest.raises(BenchError, match=r"other settings \(options: recorded \{\}, now \{'C': 0.0001\}\)"):
        run_benchmark(config, show_progress=False)
    # so would another out-of-domain set: its test texts are kept out of the draws, which changes them
    config.options, config.ood_datasets = {}, ["toyb"]
    with pytest.raises(BenchError, match=r"ood_datasets: recorded \[\], now \['toyb'\]"):
        run_benchmark(config, show_progress=False)


def test_resume_keeps_a_whole_last_record_that_lacks_its_newline(toy_data_dir, tiny_bert_dir, tmp_path):
    """A last line without a trailing newline was always cut before the next append, even when it was a whole
    record (a file edited by hand or written by another tool): a finished run was lost and redone."""
    out = tmp_path / "out"
    config = _config(toy_data_dir, tiny_bert_dir, out, methods=["probe"], seeds=[0, 1])
    run_benchmark(config, show_progress=False)
    runs = out / "runs.jsonl"
    kept = runs.read_text().rstrip("\n")  # both records whole, the final newline gone
    runs.write_text(kept)
    config.resume, config.seeds = True, [0, 1, 2]
    seen = []
    records = run_benchmark(config, show_progress=False, on_record=seen.append)
    assert [r["seed"] for r in seen] == [2]  # seed 1 was not redone
    assert sorted(r["seed"] for r in records) == [0, 1, 2]
    lines = runs.read_text().splitlines()
    assert "\n".join(lines[:2]) == kept and [json.loads(line)["seed"] for line in lines] == [0, 1, 2]


def test_failed_run_is_recorded_and_retried_on_resume(toy_data_dir, tiny_bert_dir, tmp_path, monkeypatch):
    from hf_lowdata.methods import probe

    def boom(self, task, ctx):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(probe.Probe, "fit", boom)
    out = tmp_path / "out"
    config = _config(toy_data_dir, tiny_bert_dir, out, methods=["probe"], seeds=[0])
    records = run_benchmark(config, show_progress=False)
    assert records[0]["status"] == "failed" and "simulated failure" in records[0]["error"]
    assert "## Failed runs" in (out / "summary.md").read_text()
    monkeypatch.undo()
    config.resume = True
    records = run_benchmark(config, show_progress=False)
    assert [r["status"] for r in records] == ["failed", "ok"]


def test_the_cli_counts_a_run_retried_on_resume_by_its_latest_outcome(toy_data_dir, tiny_bert_dir, tmp_path,
                                                                      monkeypatch, capsys):
    """The command counted every record of the file: a run that failed, then finished on --resume, printed
    '1 runs ok, 1 failed' and exited 1."""
    from hf_lowdata.methods import probe

    args = ["bench", "--data-dir", str(toy_data_dir), "--datasets", "toya", "--shots", "4", "--seeds", "0",
            "--methods", "probe", "--out", str(tmp_path / "o"), "--model", str(tiny_bert_dir), "--no-progress"]
    with monkeypatch.context() as patch:
        patch.setattr(probe.Probe, "fit", lambda self, task, ctx: (_ for _ in ()).throw(RuntimeError("simulated")))
        assert main(args) == 1
    assert "0 runs ok, 1 failed" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0
    assert "1 runs ok, 0 failed" in capsys.readouterr().out


def test_unknown_method_fails_before_training_and_lists_available(toy_data_dir, tiny_bert_dir, tmp_path, capsys):
    code = main(["bench", "--data-dir", str(toy_data_dir), "--datasets", "toya", "--shots", "4", "--seeds", "0",
                 "--methods", "probe,nope", "--out", str(tmp_path / "o"), "--model", str(tiny_bert_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "Unknown method 'nope'" in err and "lora" in err and "probe" in err
    assert not (tmp_path / "o" / "runs.jsonl").exists()


def test_unknown_dataset_and_model(toy_data_dir, tiny_bert_dir, tmp_path):
    with pytest.raises(BenchError, match="Dataset 'nope' not found.*Available: toya, toyb"):
        run_benchmark(_config(toy_data_dir, tiny_bert_dir, tmp_path, datasets=["nope"]), show_progress=False)
    from hf_lowdata.models import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        run_benchmark(_config(toy_data_dir, tiny_bert_dir, tmp_path, model=str(tmp_path / "no-model")), show_progress=False)
    image_model = tmp_path / "image-model"  # every planned run failed one by one, the probe with a raw OSError
    image_model.mkdir()
    (image_model / "config.json").write_text(json.dumps({"model_type": "efficientnet"}))
    with pytest.raises(ModelNotFoundError, match="is an image model"):
        run_benchmark(_config(toy_data_dir, tiny_bert_dir, tmp_path / "o", model=str(image_model)), show_progress=False)
    assert not (tmp_path / "o").exists()


def test_records_hold_the_pool_as_drawn(toy_data_dir, tiny_bert_dir, tmp_path):
    """A training split smaller than the requested pool gives fewer texts; the record says how many."""
    records = run_benchmark(_config(toy_data_dir, tiny_bert_dir, tmp_path / "o", methods=["probe", "twin_turbo"],
                                    seeds=[0], unlabelled=2000), show_progress=False)
    pools = {r["method"]: (r["status"], r["unlabelled"], r["unlabelled_examples"]) for r in records}
    left = 80 - 8 - records[1]["pool_excluded_as_test"]  # 80 training texts, 8 labelled, test copies never drawn
    assert pools == {"probe": ("ok", 0, 0), "twin_turbo": ("ok", 2000, left)} and 0 < left < 80


def test_config_keys_no_method_reads_fail_before_training(toy_data_dir, tiny_bert_dir, tmp_path):
    def bench(**options):
        config = _config(toy_data_dir, tiny_bert_dir, tmp_path, methods=["probe", "lora"], options=options)
        return run_benchmark(config, show_progress=False)

    with pytest.raises(BenchError, match=r"Unknown setting 'rr' \(did you mean 'r'\?\).*lora: .*lora_alpha"):
        bench(rr=4)
    with pytest.raises(BenchError, match="max_steps: the benchmark trains every method with its fixed budget"):
        bench(max_steps=3)
    with pytest.raises(BenchError, match="sparse_expert_m4 is defined by num_experts=4"):  # was overridden for it
        run_benchmark(_config(toy_data_dir, tiny_bert_dir, tmp_path, methods=["sparse_expert_m4"],
                              options={"num_experts": 8}), show_progress=False)
    assert not (tmp_path / "runs.jsonl").exists()
    from hf_lowdata.bench.runner import validate

    validate(_config(toy_data_dir, tiny_bert_dir, tmp_path, methods=["probe", "lora"], options={"r": 4, "C": 0.5}))


@pytest.mark.parametrize(("methods", "options", "message"), [
    (["probe", "lora"], {"r": "abc"}, r"lora: r must be a whole number >= 1, got 'abc'"),
    (["probe", "lora"], {"class_weight": "balancd"}, r"probe: class_weight must be 'balanced' or 'none', got 'balancd'"),
    (["probe", "twin_turbo"], {"aggregation": "max"}, "twin_turbo: .*aggregation"),
    (["probe", "mixup_blo"], {"merge": "maybe"}, "mixup_blo: merge must be true or false"),
    (["probe", "sparse_expert"], {"sources": "toya,nowhere"}, "nowhere not found in"),
])
def test_bad_option_values_fail_before_the_first_run(toy_data_dir, tiny_bert_dir, tmp_path, methods, options, message):
    """These were read inside each run: the probe trained and was written, then every run of the other method
    was recorded as failed with the same message."""
    with pytest.raises(BenchError, match=message):
        run_benchmark(_config(toy_data_dir, tiny_bert_dir, tmp_path / "o", methods=methods, options=options),
                      show_progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"shots": [0]}, "--shots 0"), ({"label_noise": [1.5]}, "--label-noise 1.5"), ({"totals": [1], "shots": []}, "--totals 1"),
    ({"unlabelled": -5}, "--unlabelled -5"), ({"dev_k": 0}, "--dev-k 0"), ({"dev_k": "half"}, "--dev-k half"),
    # a seed numpy and torch refuse failed every run one by one, after its draw, and wrote them all as failed
    ({"seeds": [0, -1]}, "--seeds -1"), ({"seeds": [2**32]}, f"--seeds {2**32}"),
    ({"device": "gpu0"}, "--device gpu0"),
])
def test_bad_label_budgets_fail_before_any_output(toy_data_dir, tiny_bert_dir, tmp_path, change, message):
    with pytest.raises(BenchError, match=message):
        run_benchmark(_config(toy_data_dir, tiny_bert_dir, tmp_path / "o", **change), show_progress=False)
    assert not (tmp_path / "o").exists()


def test_plan_covers_the_cross_product():
    config = BenchConfig(data_dir=".", datasets=["a", "b"], methods=["probe", "lora"], out=".", shots=[8, 16],
                         totals=[300], seeds=[0, 1, 2], label_noise=[0.0, 0.3])
    specs = plan_runs(config)
    assert len(specs) == 2 * 3 * 2 * 3 * 2 and len(set(specs)) == len(specs)
    assert [s.dataset for s in specs[: len(specs) // 2]] == ["a"] * (len(specs) // 2)


def test_protocol_defaults_and_the_pool_only_for_methods_that_use_it():
    """benchmark.md: k in {8, 16, 32} and U = 2,000 by default. A method that ignores unlabelled data gets no
    pool and is recorded with 0, so its rows do not claim a pool it never saw."""
    config = BenchConfig(data_dir=".", datasets=["a"], methods=["probe", "twin_turbo"], out=".", seeds=[0])
    assert config.shots == [8, 16, 32] and config.unlabelled == 2000
    pools = {(s.method, s.k): s.unlabelled for s in plan_runs(config)}
    assert pools == {("probe", 8): 0, ("probe", 16): 0, ("probe", 32): 0,
                     ("twin_turbo", 8): 2000, ("twin_turbo", 16): 2000, ("twin_turbo", 32): 2000}
    from hf_lowdata.cli import build_parser

    args = build_parser().parse_args(["bench", "--data-dir", ".", "--datasets", "a", "--methods", "probe", "--out", "o"])
    assert args.shots is None and args.unlabelled == 2000  # None: 8,16,32 unless --totals is given


def test_summary_mean_and_std_are_computed_from_records(tmp_path):
    base = dict(status="ok", dataset="d", method="m", k=8, n=None, label_noise=0.0, unlabelled=0, macro_f1=0.5,
                train_seconds=1.0, inference_seconds_per_1k=2.0, peak_rss_mb=100.0, trainable_params=10,
                adapter_bytes=40, ood_accuracy={}, model="x", versions={}, machine={})
    records = [dict(base, seed=i, accuracy=a, run_key=str(i)) for i, a in enumerate([0.6, 0.7, 0.8])]
    text = summary_markdown(records)
    assert "| d | m | k=8 | 0 | 0 | 3 | 70.0 ± 10.0 |" in text
    path = tmp_path / "runs.jsonl"
    for r in records:
        append_record(path, r)
    assert read_records(path) == records


def test_summary_never_averages_other_settings_or_stale_records():
    base = dict(status="ok", dataset="d", method="m", k=8, n=None, label_noise=0.0, unlabelled=0, macro_f1=0.5,
                train_seconds=1.0, inference_seconds_per_1k=2.0, peak_rss_mb=100.0, trainable_params=10,
                adapter_bytes=40, ood_accuracy={}, model="x", versions={}, machine={})
    records = [dict(base, seed=i, accuracy=0.6, run_key=f"a{i}") for i in range(3)]
    # the same runs again with another option, in another precision, on another model: never one row
    records += [dict(base, seed=0, accuracy=0.9, run_key="b0", options={"C": 0.1}),
                dict(base, seed=0, accuracy=0.9, run_key="c0", precision="bf16"),
                dict(base, seed=0, accuracy=0.9, run_key="d0", model="y")]
    # a run that failed, then succeeded on --resume: counted once, as its latest outcome
    records += [dict(base, seed=5, accuracy=0.0, run_key="e5", status="failed", error="boom", dataset="e"),
                dict(base, seed=5, accuracy=0.5, run_key="e5", dataset="e")]
    text = summary_markdown(records)
    assert "| d | m | k=8 | 0 | 0 | model=x precision=fp32 | 3 | 60.0 ± 0.0 |" in text
    for setting in ("model=x precision=fp32 C=0.1", "model=x precision=bf16", "model=y precision=fp32"):
        assert f"| {setting} | 1 † | 90.0 | 50.0 |" in text, setting  # one seed: no "± 0.0" spread
    assert "7 successful runs, 0 failed" in text and "1 earlier records of re-run runs not counted" in text
    assert "Failed runs" not in text and "† fewer seeds than the 3" in text


@pytest.mark.slow
def test_cli_bench_on_real_data_and_default_model(shared_data, tmp_path):
    """The issue's acceptance command (probe + LoRA, sst2, 8 shots, one seed) end to end."""
    out = tmp_path / "OUT"
    code = main(["bench", "--data-dir", str(shared_data), "--datasets", "sst2", "--shots", "8", "--seeds", "0",
                 "--methods", "probe,lora", "--out", str(out), "--no-progress"])
    assert code == 0
    records = read_records(out / "runs.jsonl")
    assert {r["method"] for r in records} == {"probe", "lora"} and all(r["status"] == "ok" for r in records)
    assert all(r["test_examples"] == 1821 for r in records)
    probe = next(r for r in records if r["method"] == "probe")
    assert probe["accuracy"] > 0.6
    assert (out / "summary.md").is_file() and list((out / "plots").glob("*.png"))


def _ok_record(**kw):
    base = dict(status="ok", dataset="d", method="m", k=8, n=None, label_noise=0.0, unlabelled=0, macro_f1=0.5,
                train_seconds=1.0, inference_seconds_per_1k=2.0, peak_rss_mb=100.0, trainable_params=10,
                adapter_bytes=40, ood_accuracy={}, model="x", versions={}, machine={}, accuracy=0.6, seed=0)
    base.update(kw)
    return base


def test_summary_lists_planned_runs_that_have_no_record():
    from hf_lowdata.bench.runner import RunSpec

    specs = [RunSpec("d", "m", seed, k=8) for seed in range(3)] + [RunSpec("d", "twin_turbo", 0, k=8, unlabelled=2000)]
    keys = [s.key("x") for s in specs]
    records = [_ok_record(seed=0, run_key=keys[0]), _ok_record(seed=1, run_key=keys[1])]
    text = summary_markdown(records, planned=keys)
    assert "2 of the 4 runs planned by the last invocation have no record yet" in text
    assert "| d | m | k=8 | 0 | 0 | 2 |" in text and "| d | twin_turbo | k=8 | 0 | 2000 | 0 |" in text
    assert "Planned runs without a record" not in summary_markdown(records, planned=keys[:2])
    _assert_tables_well_formed(text)


def _assert_tables_well_formed(text: str) -> None:
    """Markdown renders a table only when its header, delimiter and rows have the same number of cells."""
    import re

    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            current.append(len(re.findall(r"(?<!\\)\|", line)))
        elif current:
            tables.append(current)
            current = []
    assert tables and all(len(set(t)) == 1 for t in tables), tables


def test_out_of_domain_table_keeps_noise_pool_and_setting_apart():
    records = [_ok_record(seed=s, label_noise=noise, run_key=f"{noise}{s}", ood_accuracy={"o": acc})
               for noise, acc in ((0.0, 0.7), (0.3, 0.5)) for s in range(2)]
    records.append(_ok_record(seed=0, run_key="u", unlabelled=2000, ood_accuracy={"o": 0.9}, options={"C": 1}))
    text = summary_markdown(records).split("## Out-of-domain accuracy (%)")[1]
    assert "| d | m | k=8 | 0 | 0 | model=x precision=fp32 | 2 | 60.0 ± 0.0 | o: 70.0 ± 0.0 |" in text
    assert "| d | m | k=8 | 0.3 | 0 | model=x precision=fp32 | 2 | 60.0 ± 0.0 | o: 50.0 ± 0.0 |" in text
    assert "| d | m | k=8 | 0 | 2000 | model=x precision=fp32 C=1 | 1 | 60.0 | o: 90.0 |" in text
    _assert_tables_well_formed(summary_markdown(records))
    _assert_tables_well_formed(summary_markdown(records[:4]))  # one setting: no setting column


def test_every_dataset_is_read_before_the_first_run(toy_data_dir, tiny_bert_dir, tmp_path):
    """A data error in the last dataset stops the benchmark before any training, not hours into it."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy_data_dir, data)
    (data / "toyb" / "test.jsonl").write_text('{"text": "a text", "label": 7}\n')
    out = tmp_path / "out"
    seen = []
    with pytest.raises(Exception, match=r"toyb.*label 7 is not an id 0..1 into the label names"):
        run_benchmark(_config(data, tiny_bert_dir, out, datasets=["toya", "toyb"], methods=["probe"]),
                      show_progress=False, on_record=seen.append)
    assert seen == [] and not (out / "runs.jsonl").exists()


def test_table_cells_escape_pipes_backslashes_and_newlines():
    """A supported LoRA regex (``target_modules=.*(query|value)``) in a setting cell added a cell and broke the
    table; every text cell (dataset, method, setting, error) is escaped, and a backslash renders as typed."""
    records = [_ok_record(seed=0, run_key="a"),
               _ok_record(seed=0, run_key="b", options={"target_modules": r".*(query|value)", "note": "a\\.b"},
                          ood_accuracy={"o|x": 0.5}),
               _ok_record(seed=0, run_key="c", dataset="d|e", status="failed", error="boom|x\ny")]
    text = summary_markdown(records)
    _assert_tables_well_formed(text)
    assert r"| model=x precision=fp32 note=a\\.b target_modules=.*(query\|value) | 1 | 60.0 |" in text
    assert r"| o\|x: 50.0 |" in text and r"| d\|e | m | k=8 | 0 | 0 | model=x precision=fp32 | 0 | boom\|x y |" in text


def test_summary_names_every_version_set_and_flags_rows_that_mix_them():
    """A --resume under other library versions: the header named the first run's versions only, and a row
    averaging runs of both sets was not marked."""
    old = {"torch": "2.4.0", "transformers": "4.44.0", "peft": "0.12.0"}
    new = {"torch": "2.6.0", "transformers": "4.50.0", "peft": "0.15.0"}
    machine = {"cpu_count": 2, "torch_threads": 1, "cuda": None}
    records = [_ok_record(seed=s, run_key=f"a{s}", versions=old, machine=machine) for s in range(2)]
    records += [_ok_record(seed=s, run_key=f"b{s}", versions=new, machine=machine) for s in (2, 3)]
    records += [_ok_record(seed=s, run_key=f"c{s}", versions=old, machine=machine, method="n") for s in range(4)]
    text = summary_markdown(records)
    assert ("6 runs under torch 2.4.0, transformers 4.44.0, peft 0.12.0; "
            "2 runs under torch 2.6.0, transformers 4.50.0, peft 0.15.0; 2 CPUs, 1 torch threads.") in text
    assert "| d | m | k=8 | 0 | 0 | 4 ‡ | 60.0 ± 0.0 |" in text and "| d | n | k=8 | 0 | 0 | 4 | 60.0 ± 0.0 |" in text
    assert "‡ runs made under different torch, transformers, peft versions" in text
    _assert_tables_well_formed(text)
    one_set = summary_markdown(records[:2])  # one version set: named alone, as before, and no mark
    assert "\ntorch 2.4.0, transformers 4.44.0, peft 0.12.0; 2 CPUs, 1 torch threads.\n" in one_set
    assert "‡" not in one_set


def test_resume_refuses_another_model_in_a_folder_of_the_same_name(toy_data_dir, tiny_bert_dir, tmp_path):
    """Run keys name the model by its folder name only: a resume with another model of that name skipped every
    run as done. The model's files are compared instead; the same files at another path resume as before."""
    import re
    import shutil

    out = tmp_path / "out"
    config = _config(toy_data_dir, tiny_bert_dir, out, methods=["probe"], seeds=[0])
    first = run_benchmark(config, show_progress=False)
    saved = json.loads((out / "config.json").read_text())
    same = shutil.copytree(tiny_bert_dir, tmp_path / "copy" / tiny_bert_dir.name)  # same files, another path
    other = shutil.copytree(tiny_bert_dir, tmp_path / "other" / tiny_bert_dir.name)
    (other / "config.json").write_text(json.dumps({**json.loads((other / "config.json").read_text()), "v": 2}))
    config.resume = True
    for legacy in (False, True):  # a config.json written before the model was recorded: its --model is resolved
        if legacy:
            (out / "config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "model"}))
        config.model = str(other)
        files = r" \(files [0-9a-f]{12}\)'"
        with pytest.raises(BenchError, match=rf"other settings \(model: recorded '{re.escape(str(tiny_bert_dir))}{files}, "
                                             rf"now '{re.escape(str(other))}{files}\)"):
            run_benchmark(config, show_progress=False)
        config.model = str(same)
        seen = []
        assert len(run_benchmark(config, show_progress=False, on_record=seen.append)) == 1 and seen == []
        config.model = str(tiny_bert_dir)
    assert first[0]["run_key"] == plan_runs(config)[0].key(tiny_bert_dir.name)  # run keys unchanged
    assert saved["model"]["name"] == tiny_bert_dir.name and first[0]["model_content"] == saved["model"]["content"]


def test_summary_keeps_apart_models_whose_folders_share_a_name():
    records = [_ok_record(seed=s, run_key=f"a{s}", model_content="a" * 32) for s in range(2)]
    records += [_ok_record(seed=s, run_key=f"b{s}", model_content="b" * 32, accuracy=0.9) for s in range(2)]
    text = summary_markdown(records)
    assert "| model=x@aaaaaaaa precision=fp32 | 2 | 60.0 ± 0.0 |" in text
    assert "| model=x@bbbbbbbb precision=fp32 | 2 | 90.0 ± 0.0 |" in text
    # one model's records with and without the digest (written before it was recorded): one row, named as before
    same = summary_markdown([records[0], _ok_record(seed=1, run_key="c1")])
    assert "| d | m | k=8 | 0 | 0 | 2 | 60.0 ± 0.0 |" in same and "Every row: model=x precision=fp32." in same


def test_a_value_given_twice_plans_its_runs_once(toy_data_dir, tiny_bert_dir, tmp_path):
    """``--methods probe,probe --seeds 0,0-1 --shots 4,4``: every run was planned, trained and written once per
    repetition (12 runs for 2), the later records superseding the earlier ones."""
    config = _config(toy_data_dir, tiny_bert_dir, tmp_path / "o", datasets=["toya", "toya"], methods=["probe", "probe"],
                     shots=[4, 4], seeds=[1, 0, 1], label_noise=[0.0, 0.0])
    specs = plan_runs(config)
    assert [(s.method, s.seed, s.k) for s in specs] == [("probe", 1, 4), ("probe", 0, 4)]
    records = run_benchmark(config, show_progress=False)
    assert sorted(r["seed"] for r in records) == [0, 1]
    assert "earlier records" not in (tmp_path / "o" / "summary.md").read_text()


def test_resume_refuses_other_data_under_a_dataset_name(toy_data_dir, tiny_bert_dir, tmp_path):
    """Run keys name a dataset by its folder name only: a resume on other data of that name (another --data-dir,
    an edited train file) skipped the finished runs as done and averaged them with runs on the new data in one row.
    The dataset files are compared instead; the same files in another --data-dir resume as before."""
    import shutil

    out = tmp_path / "out"
    config = _config(toy_data_dir, tiny_bert_dir, out, datasets=["toya", "toyb"], methods=["probe"], seeds=[0])
    run_benchmark(config, show_progress=False)
    same = shutil.copytree(toy_data_dir, tmp_path / "same")
    other = shutil.copytree(toy_data_dir, tmp_path / "other")
    rows = [json.loads(line) for line in (other / "toya" / "train.jsonl").read_text().splitlines()]
    (other / "toya" / "train.jsonl").write_text("".join(json.dumps({**r, "label": 1 - r["label"]}) + "\n" for r in rows))
    config.resume, config.seeds, config.data_dir = True, [0, 1], other
    with pytest.raises(BenchError, match=r"other settings \(data: recorded \{'toya': 'files [0-9a-f]{12}'\}, now "
                                         r"\{'toya': 'files [0-9a-f]{12}'\}\)"):
        run_benchmark(config, show_progress=False)
    config.seeds, config.data_dir = [0], same
    seen = []
    assert len(run_benchmark(config, show_progress=False, on_record=seen.append)) == 2 and seen == []
    # a resume that names fewer datasets keeps the others' digests for a later one that names them again
    config.datasets = ["toya"]
    run_benchmark(config, show_progress=False)
    (other / "toya" / "train.jsonl").write_text((toy_data_dir / "toya" / "train.jsonl").read_text())
    (other / "toyb" / "test.jsonl").write_text((toy_data_dir / "toyb" / "test.jsonl").read_text().replace("was", "is"))
    config.datasets, config.data_dir = ["toyb"], other
    with pytest.raises(BenchError, match=r"data: recorded \{'toyb'"):
        run_benchmark(config, show_progress=False)
    # an out-of-domain test set is data the runs are scored on (and kept out of their draws): compared too
    config.datasets, config.ood_datasets = ["toya"], ["toyb"]
    with pytest.raises(BenchError, match=r"data: recorded \{'toyb'"):
        run_benchmark(config, show_progress=False)


def test_the_data_a_resume_compares_includes_sparse_experts_sources(toy_data_dir, tiny_bert_dir, tmp_path):
    """SMAT meta-trains on source datasets of --data-dir: other source data under the same names was accepted on
    resume, and its runs averaged with runs meta-trained on the old data."""
    from hf_lowdata.bench.runner import dataset_digests

    def digested(methods, **options):
        return set(dataset_digests(_config(toy_data_dir, tiny_bert_dir, tmp_path, datasets=["toya"], methods=methods,
                                           options=options)))

    assert digested(["probe"]) == {"toya"}
    assert digested(["probe", "sparse_expert"], sources="toyb") == {"toya", "toyb"}
    assert digested(["sparse_expert"], sources="toyb,missing") == {"toya", "toyb"}  # (a missing one fails later)
    assert digested(["sparse_expert_pretrained"], sources="toyb") == {"toya"}  # reads no source
    assert digested(["sparse_expert"], sources="toyb", source_dir=str(tmp_path)) == {"toya"}  # not from --data-dir


def test_resume_refuses_edited_budgets(toy_data_dir, tiny_bert_dir, tmp_path, monkeypatch):
    """Budgets live in hf_lowdata/budgets.py (the benchmark refuses them in --config and says to change them there)
    and are not in the run keys: a resume after a budget was edited skipped the finished runs and averaged them
    with runs trained under the new budget in one row. The budgets of the chosen methods are recorded and compared."""
    from hf_lowdata import budgets

    out = tmp_path / "out"
    config = _config(toy_data_dir, tiny_bert_dir, out, methods=["probe"], seeds=[0])
    run_benchmark(config, show_progress=False)
    probe = budgets.BUDGETS["probe"]
    config.resume, config.seeds = True, [0, 1]
    monkeypatch.setitem(budgets.BUDGETS, "probe", replace(probe, options={**probe.options, "C": 0.01}))
    with pytest.raises(BenchError, match=r"budgets: recorded \{'probe': \{'options': \{'C': 1.0, .*now "
                                         r"\{'probe': \{'options': \{'C': 0.01"):
        run_benchmark(config, show_progress=False)
    # an edit to a budget no chosen method trains with leaves the resume alone
    monkeypatch.setitem(budgets.BUDGETS, "probe", probe)
    monkeypatch.setitem(budgets.BUDGETS, "lora", replace(budgets.BUDGETS["lora"], max_steps=1))
    assert len(run_benchmark(config, show_progress=False)) == 2


def test_a_run_whose_results_cannot_be_written_fails_alone(toy_data_dir, tiny_bert_dir, tmp_path, monkeypatch):
    """A method's notes with a value JSON cannot hold (an array) raised while the record was written, outside the
    run's error handling: the benchmark stopped there, with no record of that run and none of the runs after it."""
    import numpy as np

    from hf_lowdata.methods import probe

    fit = probe.Probe.fit

    def fit_with_array_notes(self, task, ctx):
        fitted = fit(self, task, ctx)
        if ctx.seed == 0:
            fitted.notes["confusion"] = np.array([[1, 2], [3, 4]])
        return fitted

    monkeypatch.setattr(probe.Probe, "fit", fit_with_array_notes)
    records = run_benchmark(_config(toy_data_dir, tiny_bert_dir, tmp_path / "o", methods=["probe"], seeds=[0, 1]),
                            show_progress=False)
    assert [(r["seed"], r["status"]) for r in records] == [(0, "failed"), (1, "ok")]
    assert "cannot be written as JSON" in records[0]["error"] and "accuracy" not in records[0]


def test_runs_on_the_cpu_of_a_gpu_machine_are_not_reported_as_gpu_runs(toy_data_dir, tiny_bert_dir, tmp_path,
                                                                       monkeypatch):
    """The summary named the machine's GPU for every run, so --device cpu on a GPU machine reported CPU timings as
    the GPU's, and a resume with another --device mixed them under one machine. Each run records its device."""
    from hf_lowdata.bench import runner

    environment = runner.environment
    monkeypatch.setattr(runner, "environment", lambda: {**environment(), "cuda": "Fake GPU"})
    out = tmp_path / "o"
    records = run_benchmark(_config(toy_data_dir, tiny_bert_dir, out, methods=["probe"], seeds=[0], device="cpu"),
                            show_progress=False)
    assert records[0]["device"] == "cpu" and records[0]["machine"]["cuda"] == "Fake GPU"
    assert "GPU" not in (out / "summary.md").read_text()
    machine = records[0]["machine"]  # (the threads torch uses here: OMP_NUM_THREADS or the cores)
    on_gpu = _ok_record(run_key="g", seed=1, device="cuda", machine=dict(machine))
    cpu = f"{machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads"
    assert f"1 runs on {cpu}; 1 runs on {cpu}, GPU Fake GPU" in summary_markdown([records[0], on_gpu])


def test_failed_runs_are_told_apart_by_noise_pool_and_setting():
    """The failed-runs table showed dataset, method, budget and seed only: runs at 10% and 30% label noise, with and
    without the unlabelled pool, or under two option settings, failed as identical rows."""
    base = dict(status="failed", dataset="d", method="m", k=8, n=None, unlabelled=0, seed=0, error="boom", model="x")
    records = [dict(base, label_noise=0.1, run_key="a"), dict(base, label_noise=0.3, run_key="b"),
               dict(base, label_noise=0.3, unlabelled=2000, run_key="c")]
    text = summary_markdown(records)
    _assert_tables_well_formed(text)
    for row in ("| d | m | k=8 | 0.1 | 0 | 0 | boom |", "| d | m | k=8 | 0.3 | 0 | 0 | boom |",
                "| d | m | k=8 | 0.3 | 2000 | 0 | boom |"):
        assert row in text, row
    text = summary_markdown([*records[:1], dict(records[0], run_key="d", options={"C": 0.1})])
    assert "| d | m | k=8 | 0.1 | 0 | model=x precision=fp32 | 0 | boom |" in text
    assert "| d | m | k=8 | 0.1 | 0 | model=x precision=fp32 C=0.1 | 0 | boom |" in text
    _assert_tables_well_formed(text)


def test_a_missing_or_nan_score_neither_stops_the_report_nor_poisons_the_row(tmp_path):
    """An ok record without a field the table reads (written by another tool, or by hand) stopped the report with a
    KeyError, and with it every later report of the benchmark; a NaN score turned the row into ``nan ± nan``. Such
    values are left out, and the cell says how many runs it averages."""
    from hf_lowdata.bench.report import write_report

    records = [_ok_record(seed=0, run_key="a", accuracy=0.6, ood_accuracy={"o": 0.5}),
               _ok_record(seed=1, run_key="b", accuracy=0.8, ood_accuracy={"o": float("nan")}),
               _ok_record(seed=2, run_key="c", accuracy=float("nan"), ood_accuracy={}, label_noise=None)]
    del records[1]["macro_f1"], records[2]["train_seconds"], records[2]["peak_rss_mb"]
    text = summary_markdown(records)
    _assert_tables_well_formed(text)
    assert ("| d | m | k=8 | 0 | 0 | 3 | 70.0 ± 14.1 (2 of 3 runs) | 50.0 ± 0.0 (2 of 3 runs) | 1.0 (2 of 3 runs) | 2.00 | "
            "100 (2 of 3 runs) | 10 | 40 |") in text
    assert "| 3 | 70.0 ± 14.1 (2 of 3 runs) | o: 50.0 (1 of 3 runs) |" in text
    assert "nan" not in text
    write_report(records, tmp_path)
    assert (tmp_path / "plots" / "accuracy_vs_k_d.png").is_file()


def test_the_summary_says_which_standard_deviation_and_which_megabytes():
    text = summary_markdown([_ok_record(run_key="a")])
    assert "sample standard deviation, n - 1 in the denominator" in text and "MB are 2^20 bytes" in text


def test_rows_with_failed_or_unrun_runs_are_marked_even_when_every_row_lacks_them():
    """† compared a row's seeds with the fullest row's only: when seed 4 failed in every row (or a stopped benchmark
    had run seeds 0-2 of 0-4 everywhere), no row was marked, and "4" read as a complete cell."""
    from hf_lowdata.bench.runner import RunSpec

    records = [_ok_record(seed=s, method=m, run_key=f"{m}{s}") for m in ("m", "n") for s in range(4)]
    records += [_ok_record(seed=4, method=m, run_key=f"{m}4", status="failed", error="boom") for m in ("m", "n")]
    text = summary_markdown(records)
    assert "| d | m | k=8 | 0 | 0 | 4 † | 60.0 ± 0.0 |" in text and "| d | n | k=8 | 0 | 0 | 4 † |" in text
    assert "runs of the row failed or are not yet run" in text
    keys = [RunSpec("d", m, s, k=8).key("x") for m in ("m", "n") for s in range(5)]
    done = [_ok_record(seed=s, method=m, run_key=RunSpec("d", m, s, k=8).key("x")) for m in ("m", "n") for s in range(3)]
    done.append(_ok_record(seed=0, method="m", k=16, run_key=RunSpec("d", "m", 0, k=16).key("x")))
    text = summary_markdown(done, planned=keys)
    assert "| d | m | k=8 | 0 | 0 | 3 † |" in text and "| d | n | k=8 | 0 | 0 | 3 † |" in text
    assert "| d | m | k=16 | 0 | 0 | 1 † |" in text  # fewer than the fullest rows, as before
    assert "†" not in summary_markdown(done[:6], planned=keys[:3] + keys[5:8])  # every planned run done: no mark


def test_plots_tell_apart_more_methods_than_the_palette_has_colours(tmp_path, monkeypatch):
    """Colours came from tab10 by index alone: the 11th method was drawn exactly like the 1st (colour and marker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_lowdata.bench.report import write_plots

    records = [_ok_record(method=f"m{i:02d}", run_key=f"m{i}", accuracy=0.5 + i / 100) for i in range(12)]
    close = plt.close
    close("all")
    monkeypatch.setattr(plt, "close", lambda fig=None: None)  # keep the figures to look at them
    paths = write_plots(records, tmp_path)
    assert [p.name for p in paths] == ["accuracy_vs_k_d.png", "accuracy_vs_train_time.png"]
    for number in plt.get_fignums():
        ax = plt.figure(number).axes[0]
        handles, labels = ax.get_legend_handles_labels()
        assert len(labels) == 12
        looks = set()
        for handle in handles:
            artist = handle[0] if isinstance(handle, tuple) else handle  # an errorbar's line
            if hasattr(artist, "get_facecolor"):  # a scatter
                looks.add((tuple(artist.get_facecolor()[0][:3]), artist.get_paths()[0].vertices.tobytes()))
            else:
                looks.add((artist.get_color() if isinstance(artist.get_color(), str) else tuple(artist.get_color()[:3]),
                           artist.get_marker()))
        assert len(looks) == 12
    close("all")
