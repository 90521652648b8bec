"""The LowDataTrainer under DDP: two CPU processes (gloo) through torchrun, no code changes."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import run_torchrun


def _ranks(stdout: str) -> list[tuple[str, str, str, float]]:
    # The two processes print at once, so one line can run into the next: every field has a closed pattern.
    lines = re.findall(r"rank (\d)/2 world=2 trained_sum=(-?\d+\.\d{10}) critic_sum=(-?\d+\.\d{8}) steps=4 "
                       r"first_loss=(-?\d+\.\d{4})", stdout)
    assert sorted(line[0] for line in lines) == ["0", "1"], stdout
    return [(rank, w, c, float(loss)) for rank, w, c, loss in lines]


def test_two_processes_keep_model_and_objective_modules_in_sync(tiny_bert_dir, tmp_path):
    stdout = run_torchrun(Path(__file__).with_name("ddp_worker.py"), str(tiny_bert_dir), str(tmp_path / "out"))
    (_, w0, c0, loss), (_, w1, c1, _) = _ranks(stdout)
    assert w0 == w1  # DDP-synchronised model
    assert c0 == c1  # the objective's critic: gradients averaged by step_auxiliary
    # a 2-class model starts near ln 2 = 0.69; Trainer scaled the loss by the process count (1.38)
    assert loss < 0.9


def test_an_objective_that_bypasses_ddp_forward_still_trains_the_same_weights_on_every_process(tiny_bert_dir,
                                                                                               tmp_path):
    """TwinTurbo calls projector and backbone directly: without the trainer's gradient averaging every process
    trained its own weights (and tokenised inputs crashed: the backbone was looked up on the DDP wrapper)."""
    stdout = run_torchrun(Path(__file__).with_name("ddp_worker.py"), str(tiny_bert_dir), str(tmp_path / "out"),
                          "twin_turbo")
    (_, w0, _, _), (_, w1, _, _) = _ranks(stdout)
    assert w0 == w1


def test_a_checkpoint_is_marked_complete_only_after_every_process_saved_its_rng_state(tiny_bert_dir, tmp_path):
    """trainer_state.json marks a checkpoint complete; rank 0 wrote it while rank 1's RNG file was still being
    written (a kill then left a 'complete' checkpoint whose resume crashed in torch.load)."""
    stdout = run_torchrun(Path(__file__).with_name("ddp_worker.py"), str(tiny_bert_dir), str(tmp_path / "out"),
                          "checkpoint")
    assert "rng files complete when checkpoints were marked complete: [True, True]" in stdout, stdout


def test_sparse_expert_meta_training_keeps_every_process_on_the_same_experts(tiny_bert_dir, tmp_path):
    """Each process meta-trains on its own episodes; deltas, mask logits, router and multipliers must stay the same
    on every process (the sparsity push used each process's own routing: the masks drifted apart)."""
    stdout = run_torchrun(Path(__file__).with_name("ddp_worker.py"), str(tiny_bert_dir), str(tmp_path / "out"),
                          "sparse_expert")
    (_, w0, m0, _), (_, w1, m1, _) = _ranks(stdout)
    assert w0 == w1 and m0 == m1
    seen = dict(re.findall(r"rank (\d) episodes=(\[[\d, ]*\])", stdout))
    assert sorted(seen) == ["0", "1"], stdout
    assert seen["0"] != seen["1"], stdout  # the processes did see different episodes
    sparsity = dict(re.findall(r"rank (\d) episodes=\[[\d, ]*\] sparsity=(\[[^\]]*\])", stdout))
    assert sparsity["0"] == sparsity["1"], stdout
