"""Worker for test_mixup_blo.py's DDP test: MixupBLO's fold protocol with a state folder under torchrun.

``ddp_mixup_worker.py MODEL OUT``: prints, per process, a hash of the trained parameters and how many fold
files that process wrote (every process holds the same fold state; one must write it).
"""

import hashlib
import os
import sys

import safetensors.torch
from accelerate import PartialState
from peft import TaskType

from hf_lowdata import MixupBLOConfig
from hf_lowdata.budgets import Budget
from hf_lowdata.data import TextDataset, collator, tokenize
from hf_lowdata.methods.mixup_blo import train_mixup_blo
from hf_lowdata.models import load_for_classification, load_tokenizer
from hf_lowdata.training import few_shot_training_args
from tests.helpers import toy_sentences

path, out = sys.argv[1], sys.argv[2]
writes = []
save_file = safetensors.torch.save_file


def counting_save_file(tensors, filename, *args, **kwargs):
    writes.append(filename)
    return save_file(tensors, filename, *args, **kwargs)


safetensors.torch.save_file = counting_save_file
tok = load_tokenizer(path)
rows = toy_sentences(24, 0)
data = tokenize(TextDataset(tuple(r["text"] for r in rows), tuple(r["label"] for r in rows), ("neg", "pos")), tok)
config = MixupBLOConfig(task_type=TaskType.SEQ_CLS, hypergradient="first_order", folds=2)


def training_args(phase, fold, n, seed):
    return few_shot_training_args(f"{out}/{phase}{fold}", Budget(learning_rate=1e-3, min_steps=2, max_steps=2,
                                                                 batch_size=4), n, seed, use_cpu=True)


model = train_mixup_blo(lambda: load_for_classification(path, 2, ["neg", "pos"], seed=0), config, data,
                        training_args, seed=0, trainer_kwargs={"data_collator": collator(tok), "processing_class": tok},
                        state_dir=f"{out}/folds")
state = PartialState()
digest = hashlib.sha256()
for _, p in sorted(model.named_parameters()):
    digest.update(p.detach().numpy().tobytes())
fold_writes = sum("fold" in os.path.basename(str(f)) for f in writes)
print(f"RESULT rank={state.process_index} params={digest.hexdigest()[:16]} fold_writes={fold_writes}", flush=True)
state.destroy_process_group()
os._exit(0)  # skip interpreter teardown: torch 2.13 (CPU, gloo) can abort there, after all work
