"""How the default recipe was chosen: `python benchmarks/recipe_grid.py CSV OUT [--tiny]` (see `--help`) (best on a GPU: about 5 minutes).

Appends one JSON line per run to `OUT/grid.jsonl`: final and per-epoch validation MAE for fixed learning rates, batch
sizes and precisions, and what `lr_find` suggests for several seeds. Not part of the tests."""
import json, time, warnings
from fastcore.script import call_parse
from pathlib import Path
from fastai.vision.all import *
from flowers.data import count_dls
from flowers.learner import count_learner
from flowers.precision import set_precision

_dls = {}
def _learner(csv, size, bs, seed, precision):
    "A fresh `count_learner`; `DataLoaders` are built once per (size, bs, seed) and reused"
    if (size,bs,seed) not in _dls:
        _dls[size,bs,seed] = count_dls(csv, size=size, bs=bs, seed=seed, verify=False, device=default_device())
    set_seed(seed, reproducible=True)
    learn = count_learner(_dls[size,bs,seed], pretrained=False)
    set_precision(learn, precision)
    return learn

def _log(out, r):
    print(json.dumps(r), flush=True)
    with open(out/'grid.jsonl', 'a') as f: f.write(json.dumps(r)+'\n')

def suggestions(csv, out, seed, size=64, bs=64, precision='bf16', start_lr=1e-5, num_it=60):
    "Every `lr_find` suggestion for one seed"
    learn = _learner(csv, size, bs, seed, precision)
    with learn.no_bar(), learn.no_logging():
        s = learn.lr_find(start_lr=start_lr, num_it=num_it, suggest_funcs=(valley, slide, minimum, steep), show_plot=False)
    _log(out, dict(kind='lr_find', seed=seed, bs=bs, start_lr=start_lr, num_it=num_it, **{k:float(v) for k,v in s._asdict().items()}))

def fit(csv, out, lr, epochs=10, size=64, bs=64, seed=42, precision='bf16', epochs_run=None):
    "Final and per-epoch validation MAE of `fit_one_cycle(epochs, lr)`"
    learn = _learner(csv, size, bs, seed, precision)
    t = time.time()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs_run or epochs, lr)
    h = [round(float(v[2]), 3) for v in learn.recorder.values]
    _log(out, dict(kind='fit', size=size, bs=bs, epochs=epochs, lr=lr, seed=seed, precision=precision, mae=h[-1], hist=h, s=round(time.time()-t, 1)))

@call_parse
def main(csv:str, # Counts CSV to train on (e.g. data/flowers/counts.csv)
         out:str, # Folder for grid.jsonl (appended to)
         tiny:bool=False, # One lr_find and one 1-epoch fit: checks that the script runs
        ):
    "Append lr_find suggestions and fixed-lr fits of the default recipe to OUT/grid.jsonl"
    warnings.filterwarnings('ignore')
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    runs = [partial(suggestions, seed=s) for s in (42, 1, 2, 3, 4)]
    runs += [partial(fit, lr=lr, seed=s) for s in (42, 1) for lr in (1e-3, 2e-3, 3e-3, 5e-3)]
    runs += [partial(fit, lr=3e-3, seed=s, precision='fp32') for s in (42, 1)]
    runs += [partial(fit, lr=3e-3, seed=2), partial(fit, lr=2e-3, seed=2), partial(fit, lr=3e-3, seed=2, precision='fp32')]
    for f in (runs[:1]+runs[5:6] if tiny else runs):
        try: f(csv, out, **(dict(epochs_run=1) if tiny and f.func is fit else {}))
        except Exception as e: print('FAILED', f, e, flush=True)
