"""The result folder's lock: one writer per output folder, released however the writer ends."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from hf_lowdata.bench import BenchConfig, run_benchmark
from hf_lowdata.bench.results import OutputFolderBusyError, locked_output
from hf_lowdata.cli import main

HOLDER = textwrap.dedent("""
    import sys, time
    from hf_lowdata.bench.results import locked_output
    with locked_output(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
""")


def _hold_lock(folder):
    """A separate process holding the folder's lock until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_benchmark_on_a_busy_folder_is_refused_and_changes_nothing(toy_data_dir, tiny_bert_dir, tmp_path,
                                                                             capsys):
    out = tmp_path / "out"
    config = BenchConfig(data_dir=toy_data_dir, datasets=["toya"], methods=["probe"], out=out, shots=[4],
                         seeds=[0], model=str(tiny_bert_dir), options={})
    run_benchmark(config, show_progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    config.seeds, config.resume = [0, 1], True
    holder = _hold_lock(out)
    try:
        with pytest.raises(OutputFolderBusyError, match=rf"being written by process {holder.pid}.*another --out"):
            run_benchmark(config, show_progress=False)
        code = main(["bench", "--data-dir", str(toy_data_dir), "--datasets", "toya", "--methods", "probe",
                     "--model", str(tiny_bert_dir), "--shots", "4", "--seeds", "0-1", "--out", str(out), "--resume",
                     "--no-progress"])
        assert code == 2 and "is being written by process" in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before
    finally:
        holder.kill()
        holder.wait()
    # a killed writer leaves no stale lock: the folder can be resumed at once
    records = run_benchmark(config, show_progress=False)
    assert sorted((r["seed"], r["status"]) for r in records) == [(0, "ok"), (1, "ok")]


def test_the_lock_is_released_when_the_body_ends(tmp_path):
    folder = tmp_path / "new"
    with locked_output(folder), pytest.raises(OutputFolderBusyError), locked_output(folder):  # created, then busy
        pass
    with locked_output(folder):  # free again, also after an exception
        pass
    with pytest.raises(KeyError), locked_output(folder):
        raise KeyError("boom")
    with locked_output(folder):
        pass


def test_a_damaged_record_line_is_named_and_a_cut_last_line_is_not(tmp_path):
    import json
    import warnings

    from hf_lowdata.bench.results import read_records

    runs = tmp_path / "runs.jsonl"
    good = [json.dumps({"run_key": str(i)}) for i in range(3)]
    runs.write_text(good[0] + "\n" + good[1][:-5] + "\n" + good[2] + "\n" + good[0][:9])
    with pytest.warns(UserWarning, match=r"runs.jsonl, line 2 is not a run record") as caught:
        records = read_records(runs)
    assert [r["run_key"] for r in records] == ["0", "2"] and len(caught) == 1  # the cut last line says nothing
    runs.write_text(good[0] + "\n" + good[1][:9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_records(runs)) == 1


def test_ctrl_c_in_bench_is_one_message_not_a_traceback(monkeypatch, tmp_path, capsys):
    import hf_lowdata.bench as bench

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_benchmark", interrupted)
    code = main(["bench", "--data-dir", str(tmp_path), "--datasets", "x", "--methods", "probe", "--out",
                 str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 130 and "Interrupted. Finished runs are in" in err and "--resume" in err


def test_repair_tail_adds_the_newline_to_a_whole_last_record_and_cuts_a_partial_one(tmp_path):
    import json

    from hf_lowdata.bench.results import append_record, read_records, repair_tail

    runs = tmp_path / "runs.jsonl"
    first, last = json.dumps({"run_key": "a"}), json.dumps({"run_key": "b", "text": "caf\u00e9"}, ensure_ascii=False)
    runs.write_text(first + "\n" + last, encoding="utf-8")
    repair_tail(runs)
    assert runs.read_text(encoding="utf-8") == first + "\n" + last + "\n"
    append_record(runs, {"run_key": "c"})
    assert [r["run_key"] for r in read_records(runs)] == ["a", "b", "c"]
    for partial in (last[:-1], '{"run_key": "b"} x', "[1, 2]", "\xff\xfe"):  # cut, trailing junk, not a record
        runs.write_bytes((first + "\n").encode() + partial.encode("latin-1" if partial.startswith("\xff") else "utf-8"))
        repair_tail(runs)
        assert runs.read_text(encoding="utf-8") == first + "\n", partial
    runs.write_text(first + "\n")  # already ends on a newline: untouched
    repair_tail(runs)
    assert runs.read_text() == first + "\n"


def test_a_record_with_a_raw_line_separator_in_a_string_is_one_record(tmp_path):
    """Records were split with str.splitlines, which also breaks at U+2028, U+0085 and the like: JSON written
    without ASCII escapes (another tool, ensure_ascii=False) keeps them raw inside strings, so such a finished run
    was read as two damaged lines and redone."""
    import json
    import warnings

    from hf_lowdata.bench.results import finished_keys, read_records, repair_tail

    runs = tmp_path / "runs.jsonl"
    records = [{"run_key": "a", "status": "ok", "note": "one\u2028two"}, {"run_key": "b", "status": "ok", "x": "\x85"}]
    runs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in records), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_records(runs) == records and finished_keys(read_records(runs)) == {"a", "b"}
    runs.write_text(json.dumps(records[0], ensure_ascii=False), encoding="utf-8")  # no final newline
    repair_tail(runs)
    assert read_records(runs) == records[:1]


def test_the_settings_file_is_synced_before_it_replaces_the_old_one(toy_data_dir, tiny_bert_dir, tmp_path,
                                                                     monkeypatch):
    """config.json was renamed into place unsynced: a crash of the machine could leave it empty, and an unreadable
    settings file lets a --resume with other settings through (it says nothing to compare with)."""
    import json
    import os

    synced, renamed = set(), []
    fsync, replace = os.fsync, os.replace

    def sync(fd):
        synced.add(os.path.realpath(f"/proc/self/fd/{fd}"))
        fsync(fd)

    def rename(src, dst):
        renamed.append((os.path.realpath(src), os.path.basename(dst), os.path.realpath(src) in synced))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", sync)
    monkeypatch.setattr(os, "replace", rename)
    config = BenchConfig(data_dir=toy_data_dir, datasets=["toya"], methods=["probe"], out=tmp_path / "out",
                         shots=[4], seeds=[0], model=str(tiny_bert_dir), options={})
    run_benchmark(config, show_progress=False)
    assert [done for _, name, done in renamed if name == "config.json"] == [True]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["config"]["seeds"] == [0]


def test_resume_and_summary_agree_on_a_run_recorded_ok_then_failed():
    """The summary counts a run by its latest record, resume by any ok record: a run written ok, then failed (an
    older version ran `--methods probe,probe` twice) was listed as failed, with "--resume runs them", and never run."""
    from hf_lowdata.bench.report import latest_records
    from hf_lowdata.bench.results import finished_keys

    records = [{"run_key": "a", "status": "ok"}, {"run_key": "a", "status": "failed"},
               {"run_key": "b", "status": "failed"}, {"run_key": "b", "status": "ok"}, {"status": "ok"}]
    assert finished_keys(records) == {r["run_key"] for r in latest_records(records)
                                   if r["status"] == "ok" and "run_key" in r} == {"b"}
