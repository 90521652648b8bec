# Control for MixupBLO's extra training steps on the derived claims task at N = 500: full fine-tuning with 563
# optimizer steps, as many as mixup_blo_fast trains in all (250 search steps on 80% of N, then 313 phase-2 steps);
# same data, draws and seeds as the bench. Usage: python full_563_steps.py DERIVED_DIR OUT_DIR [SEEDS, e.g. 0,1,2]
import sys
from dataclasses import replace
from pathlib import Path

from hf_lowdata import budgets
from hf_lowdata.bench import BenchConfig, run_benchmark

budgets.BUDGETS["full"] = replace(budgets.BUDGETS["full"], max_steps=563, min_epochs=0.0)
assert budgets.BUDGETS["full"].steps(500) == 563
config = BenchConfig(data_dir=Path(sys.argv[1]), datasets=["claims"], methods=["full"], out=Path(sys.argv[2]), shots=[],
                     totals=[500], seeds=[int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else "0,1,2").split(",")],
                     resume=True)
records = run_benchmark(config, show_progress=False)
print(len(records), "records")
