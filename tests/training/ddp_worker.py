"""Worker for test_distributed.py: trains 4 steps, prints per-rank sums of the trained weights.

``ddp_worker.py MODEL OUT`` trains BERT with an auxiliary optimizer (CriticObjective); ``... OUT twin_turbo``
trains a TwinTurbo adapter on tokenised inputs (its objective calls the projector directly, not DDP's forward);
``... OUT sparse_expert`` meta-trains a SparseExpert adapter on episodes (masks, multipliers and router printed too).
"""

import os
import sys

from accelerate import PartialState

from hf_lowdata.budgets import Budget
from hf_lowdata.data import TextDataset, collator, tokenize
from hf_lowdata.models import load_for_classification, load_tokenizer
from hf_lowdata.training import LowDataTrainer, few_shot_training_args
from tests.helpers import toy_sentences
from tests.training.test_trainer import CriticObjective

path, out = sys.argv[1], sys.argv[2]
tok = load_tokenizer(path)
rows = toy_sentences(24, 0)
data = TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos"))
unl = tokenize(TextDataset(tuple(r["text"] for r in toy_sentences(30, 7)), None, ("neg", "pos")), tok)
mode = sys.argv[3] if len(sys.argv) > 3 else "critic"
checkpoint_checks = []
if mode == "checkpoint":  # a slow RNG save on rank 1; is it complete when the checkpoint is marked complete?
    import time

    import torch
    import transformers.trainer_callback

    torch_save, save_to_json = torch.save, transformers.trainer_callback.TrainerState.save_to_json

    def slow_save(obj, f, *a, **k):
        if str(f).endswith("rng_state_1.pth"):
            time.sleep(1.0)
        return torch_save(obj, f, *a, **k)

    def checked_save_to_json(self, json_path):
        rng = os.path.join(os.path.dirname(json_path), "rng_state_1.pth")
        try:
            torch.load(rng, weights_only=False)
            checkpoint_checks.append(True)
        except Exception:  # noqa: BLE001 - missing or truncated
            checkpoint_checks.append(False)
        return save_to_json(self, json_path)

    torch.save = slow_save
    transformers.trainer_callback.TrainerState.save_to_json = checked_save_to_json
extra = dict(save_strategy="steps", save_steps=2) if mode == "checkpoint" else {}
args = few_shot_training_args(out, Budget(learning_rate=1e-3, epochs=1, min_steps=4, max_steps=4, batch_size=4), 24, seed=0, use_cpu=True, **extra)
if mode == "sparse_expert":  # episodes, one per step and process: 8 episodes = 4 steps on each of 2 processes
    from tests.tuners.sparse_expert.helpers import episodes, smat_encoder

    budget = Budget(learning_rate=5e-3, epochs=1, min_steps=4, max_steps=4, batch_size=1, warmup_ratio=0.1)
    args = few_shot_training_args(out, budget, 1, seed=0, use_cpu=True)
    tr = LowDataTrainer(model=smat_encoder(path), args=args, train_dataset=episodes(path, 8))
    seen, compute_loss = [], tr.objective.compute_loss

    def recording_compute_loss(trainer, model, inputs, *a, **k):
        seen.append(int(inputs["episode_index"]))
        return compute_loss(trainer, model, inputs, *a, **k)

    tr.objective.compute_loss = recording_compute_loss
else:
    if mode == "twin_turbo":
        from tests.tuners.twin_turbo.helpers import tiny_model

        model, objective = tiny_model(path), None
    else:
        model, objective = load_for_classification(path, 2, seed=0), CriticObjective()
    tr = LowDataTrainer(model=model, args=args, train_dataset=tokenize(data, tok), data_collator=collator(tok), processing_class=tok, objective=objective, unlabeled_dataset=unl, unlabeled_batch_size=3)
tr.train()
st = PartialState()
w = sum(p.detach().double().sum().item() for p in tr.model.parameters() if p.requires_grad)
c = tr.objective.critic.weight.detach().sum().item() if mode == "critic" else 0.0
if mode == "sparse_expert":
    c = tr.objective.multipliers.sum().item()
    masks = tr.model.base_model.mask_sparsity().tolist()
    print(f"rank {st.process_index} episodes={sorted(seen)} sparsity={masks}", flush=True)
first_loss = tr.state.log_history[0]["loss"]
print(f"rank {st.process_index}/{st.num_processes} world={args.world_size} trained_sum={w:.10f} critic_sum={c:.8f} steps={tr.state.global_step} first_loss={first_loss:.4f}", flush=True)
if checkpoint_checks:
    print(f"rng files complete when checkpoints were marked complete: {checkpoint_checks}", flush=True)
st.destroy_process_group()
os._exit(0)  # skip interpreter teardown: torch 2.13 (CPU, gloo) can abort there, after all work
