# Control for MixupBLO's extra training steps: full fine-tuning with 320 optimizer steps (mixup_blo_fast trains
# 160 search steps on 80% of N, then 160 phase-2 steps), same draws and seeds as the bench.
from dataclasses import replace
from pathlib import Path
import sys
from hf_lowdata import budgets
from hf_lowdata.bench import BenchConfig, run_benchmark
budgets.BUDGETS["full"] = replace(budgets.BUDGETS["full"], max_steps=320)
config = BenchConfig(data_dir=Path("/work/shared/data"), datasets=["cr"], methods=["full"], out=Path(sys.argv[1]), shots=[],
                     totals=[1000], seeds=[0, 1, 2, 3, 4], resume=True)
records = run_benchmark(config, show_progress=False)
print(len(records), "records")
