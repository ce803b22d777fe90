"""What trained models count on empty ground: fresh fields without a head, of every background family the generator draws.

    python benchmarks/empty_fields.py RUN[,RUN...]            # e.g. a no-flag run's folder, and one trained longer

`generalisation.py` measures this for models trained without a family; this is the same measure for any run, such as the
no-flag default's, trained on every family: the issue asks 0.5 at most on each background. The fields' seed is unlike any
training set's.
"""
import json, sys, numpy as np
from pathlib import Path
from fastcore.script import call_parse
sys.path.insert(0, str(Path(__file__).resolve().parents[1])); sys.path.insert(0, str(Path(__file__).resolve().parent))
from flowers.counter import load_counter
from generalisation import empty_sets, empty_counts, RESULTS

@call_parse
def main(runs:str, # Run folders to measure, comma-separated
         n:int=40, # Empty fields of each background
         seed:int=90000, # Their seed
         root:str='/tmp/flowers-empty', # Where the fields go
         out:str='empty_fields', # Results name in benchmarks/results (or a path, without .json)
        ):
    "Count fresh empty fields of every background with each run's model"
    sets,rows = empty_sets(Path(root), n, seed),[]
    for run in runs.split(','):
        empty = empty_counts(load_counter(run, precision='fp32'), sets)
        rows.append(dict(run=run, mean=float(np.mean(list(empty.values()))), empty=empty))
        print(f"{run}: mean {rows[-1]['mean']:.2f}; " + ', '.join(f'{b} {v:.2f}' for b,v in empty.items()), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS/f'{out}.json').write_text(json.dumps(dict(n=n, seed=seed, runs=rows), indent=2))
