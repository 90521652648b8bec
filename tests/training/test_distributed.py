"""The LowDataTrainer under DDP: two CPU processes (gloo) through torchrun, no code changes."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import run_torchrun


def test_two_processes_keep_model_and_objective_modules_in_sync(tiny_bert_dir, tmp_path):
    stdout = run_torchrun(Path(__file__).with_name("ddp_worker.py"), str(tiny_bert_dir), str(tmp_path / "out"))
    lines = re.findall(r"rank (\d)/2 world=2 classifier_sum=(\S+) critic_sum=(\S+) steps=4", stdout)
    assert sorted(line[0] for line in lines) == ["0", "1"], stdout
    (_, w0, c0), (_, w1, c1) = lines
    assert w0 == w1  # DDP-synchronised model
    assert c0 == c1  # the objective's critic: gradients averaged by step_auxiliary
