"""Worker for the edge cases in test_distributed.py (two CPU processes under torchrun); prints one line per rank.

``ddp_edge_worker.py MODEL OUT MODE [DATA_DIR]``, MODE one of:

- ``nonfinite``: TwinTurbo (its objective bypasses DDP's forward) whose loss is NaN on rank 1 only at step 2;
- ``tiny_pool``: TwinTurbo with an unlabelled pool of one text (fewer than the processes);
- ``log_terms``: TwinTurbo's logged loss terms (rank 0's were recorded as everyone's);
- ``meta_train``: SparseExpert meta-training through ``meta_train`` (episodes seen, adapter published);
- ``sparse_eval``: evaluating 5 episodes on 2 processes.
"""

import os
import sys

import torch
from accelerate import PartialState

from hf_lowdata.budgets import Budget
from hf_lowdata.data import TextDataset, collator, tokenize
from hf_lowdata.models import load_tokenizer
from hf_lowdata.training import LowDataTrainer, NonFiniteLossError, few_shot_training_args
from tests.helpers import toy_sentences

path, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
rank = int(os.environ["RANK"])  # (torchrun's; accelerate's state is set up by the trainer's arguments)
tok = load_tokenizer(path)
rows = toy_sentences(24, 0)
data = tokenize(TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos")), tok)
budget = Budget(learning_rate=1e-3, epochs=1, min_steps=4, max_steps=4, batch_size=4)


def twin_turbo_trainer(pool_size: int) -> LowDataTrainer:
    from tests.tuners.twin_turbo.helpers import tiny_model

    pool = tokenize(TextDataset(tuple(r["text"] for r in toy_sentences(pool_size, 7)), None, ("neg", "pos")), tok)
    args = few_shot_training_args(out, budget, 24, seed=0, use_cpu=True, logging_steps=1)
    return LowDataTrainer(model=tiny_model(path), args=args, train_dataset=data, data_collator=collator(tok),
                          processing_class=tok, unlabeled_dataset=pool, unlabeled_batch_size=3)


if mode == "nonfinite":
    trainer = twin_turbo_trainer(30)
    compute_loss = trainer.objective.compute_loss

    def nan_on_rank_1(tr, model, inputs, *args, **kwargs):
        loss = compute_loss(tr, model, inputs, *args, **kwargs)
        if rank == 1 and tr.state.global_step == 1:
            loss = loss * float("nan")
        return loss

    trainer.objective.compute_loss = nan_on_rank_1
    try:
        trainer.train()
        print(f"rank {rank} result=trained", flush=True)
    except NonFiniteLossError as err:
        print(f"rank {rank} result=stopped step={str(err).split(' at step ')[1].split()[0]}", flush=True)
elif mode == "tiny_pool":
    trainer = twin_turbo_trainer(1)
    trainer.train()
    print(f"rank {rank} result=trained steps={trainer.state.global_step}", flush=True)
elif mode == "log_terms":
    trainer = twin_turbo_trainer(30)
    trainer.train()
    terms = [round(entry["twin_turbo/cond"], 6) for entry in trainer.state.log_history if "twin_turbo/cond" in entry]
    print(f"rank {rank} result=terms {terms}", flush=True)
elif mode == "meta_train":
    from hf_lowdata.methods.sparse_expert import META_FILE, MetaTrainingPlan, meta_train
    from hf_lowdata.tuners.sparse_expert import SparseExpertObjective

    seen = []
    compute_loss = SparseExpertObjective.compute_loss

    def recording(self, trainer, model, inputs, *args, **kwargs):
        if model.training:
            seen.append(int(inputs["episode_index"]))
        return compute_loss(self, trainer, model, inputs, *args, **kwargs)

    SparseExpertObjective.compute_loss = recording
    plan = MetaTrainingPlan(model=path, source_dir=sys.argv[4], sources=("toya", "toyb"), steps=2, meta_batch=2,
                            query_per_class=2, shot=(1, 2))
    folder = meta_train(plan, cache_dir=out)
    print(f"rank {rank} result=episodes {sorted(seen)} published={os.path.isfile(os.path.join(folder, META_FILE))}",
          flush=True)
elif mode == "sparse_eval":
    from tests.tuners.sparse_expert.helpers import episodes, smat_encoder

    args = few_shot_training_args(out, Budget(learning_rate=5e-3, epochs=1, min_steps=1, max_steps=1, batch_size=1),
                                  1, seed=0, use_cpu=True)
    trainer = LowDataTrainer(model=smat_encoder(path), args=args, train_dataset=episodes(path, 2))
    try:
        trainer.evaluate(episodes(path, 5, seed=1))
        print(f"rank {rank} result=evaluated", flush=True)
    except ValueError as err:
        print(f"rank {rank} result=refused {'must split evenly' in str(err)}", flush=True)
else:
    raise SystemExit(f"unknown mode {mode}")
torch.distributed.barrier()
PartialState().destroy_process_group()
os._exit(0)  # skip interpreter teardown: torch 2.13 (CPU, gloo) can abort there, after all work
