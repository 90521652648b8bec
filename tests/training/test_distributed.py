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


def _edge(tiny_bert_dir, tmp_path, mode: str, *extra: str) -> dict[str, str]:
    """Each rank's ``result=...`` line of ddp_edge_worker.py in ``mode``."""
    stdout = run_torchrun(Path(__file__).with_name("ddp_edge_worker.py"), str(tiny_bert_dir), str(tmp_path / "out"),
                          mode, *extra, timeout=300)
    results = dict(re.findall(r"rank (\d) result=([^\n]*?)(?=rank \d result=|\n|$)", stdout))
    assert sorted(results) == ["0", "1"], stdout
    return results


def test_a_non_finite_loss_on_one_process_stops_every_process_at_the_same_step(tiny_bert_dir, tmp_path):
    """Only the process with the NaN raised; the others waited in the next collective (a hang, or gloo's
    'Connection closed by peer')."""
    assert _edge(tiny_bert_dir, tmp_path, "nonfinite") == {"0": "stopped step=2", "1": "stopped step=2"}


def test_an_unlabelled_pool_smaller_than_the_process_count_still_trains(tiny_bert_dir, tmp_path):
    """A process whose slice of the pool was empty crashed in the collator."""
    assert _edge(tiny_bert_dir, tmp_path, "tiny_pool") == {"0": "trained steps=4", "1": "trained steps=4"}


def test_logged_objective_terms_are_averaged_over_processes(tiny_bert_dir, tmp_path):
    results = _edge(tiny_bert_dir, tmp_path, "log_terms")
    assert results["0"] == results["1"] and results["0"].startswith("terms [")  # rank 0's own values before


def test_meta_training_on_two_processes_keeps_the_global_meta_batch_of_distinct_episodes(
        tiny_bert_dir, toy_data_dir, tmp_path):
    """Each process accumulated the whole meta-batch: steps saw every episode twice over, and the adapter (cached
    under the one-process key) was another."""
    results = _edge(tiny_bert_dir, tmp_path, "meta_train", str(toy_data_dir))
    seen = [eval(results[r].split("episodes ")[1].split(" published")[0]) for r in ("0", "1")]  # noqa: S307
    assert sorted(seen[0] + seen[1]) == [0, 1, 2, 3]  # 2 steps x meta-batch 2, each episode once
    assert all(results[r].endswith("published=True") for r in ("0", "1"))


def test_evaluating_episodes_that_do_not_split_over_the_processes_is_refused(tiny_bert_dir, tmp_path):
    """accelerate trimmed the last gathered batch by rows, not episodes: query rows went missing from the metrics."""
    assert _edge(tiny_bert_dir, tmp_path, "sparse_eval") == {"0": "refused True", "1": "refused True"}
