"""The LowDataTrainer under DDP: two CPU processes (gloo) through torchrun, no code changes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO_ROOT


def test_two_processes_keep_model_and_objective_modules_in_sync(tiny_bert_dir, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", str(worker), str(tiny_bert_dir),
         str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = re.findall(r"rank (\d)/2 world=2 classifier_sum=(\S+) critic_sum=(\S+) steps=4", proc.stdout)
    assert sorted(line[0] for line in lines) == ["0", "1"], proc.stdout
    (_, w0, c0), (_, w1, c1) = lines
    assert w0 == w1  # DDP-synchronised model
    assert c0 == c1  # the objective's critic: gradients averaged by step_auxiliary
