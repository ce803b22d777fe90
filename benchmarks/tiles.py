"""How large should the windows of counting by tiles be? Fresh mosaics and wide fields counted with windows of several sizes.

    python benchmarks/tiles.py RUN                       # windows 1, 1.4 and 2 training images a side
    python benchmarks/tiles.py RUN --windows 1,2 --n 8   # others, fewer mosaics

Mosaics are 4 x 4 fresh 128 px fields (every 4th with 20 heads in each field) counted with `tile=128`, scored by their
error relative to the true total, beside the 16 fields counted one by one; empty mosaics (no head in any field) give the
count of empty ground; wide fields (2:1 to 4:1, 0..20 heads) are counted with `tile=` their shorter side, beside whole.
The seeds are not those of `localisation.py`'s mosaics, which stay a check on what these choose.
"""
import json, sys, numpy as np, pandas as pd
from pathlib import Path
from fastcore.script import call_parse
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import flowers.counter
from flowers.predict import load_counter
from flowers.synth import flower_field
from localisation import mosaic, RESULTS

def window_counts(counter, img, tile, windows) -> dict:
    "`counter.predict(img, tile=tile)` with windows of each of `windows` training images a side"
    was,res = flowers.counter.WINDOW,{}
    try:
        for w in windows:
            flowers.counter.WINDOW = w
            res[f'window {w:g}'] = counter.predict(img, tile=tile)
    finally: flowers.counter.WINDOW = was
    return res

def mosaic_table(counter, root, windows, n, seed, empty) -> pd.DataFrame:
    "Each mosaic's true total, its fields counted one by one, and its count with each window size"
    rows = []
    for k in range(n+empty):
        counts = (0, 0) if k>=n else (20, 20) if k%4==3 else (0, 20)
        m,true,files = mosaic(root, seed+k, counts=counts)
        rows.append(dict(true=true, fields=sum(counter.predict(f) for f in files), **window_counts(counter, m, 128, windows)))
    return pd.DataFrame(rows)

def wide_table(counter, windows, n, seed, shapes=(2, 3, 4), side=128) -> pd.DataFrame:
    "MAE and bias of `n` fresh fields of each shape (width:height), counted whole and with `tile=` their height"
    rng,rows = np.random.default_rng(seed),[]
    for r in shapes:
        for i in range(n):
            k = int(rng.integers(0, 21))
            img = flower_field(k, size=(side*r, side), seed=seed+100*r+i)
            rows.append(dict(shape=f'{r}:1', true=k, whole=counter.predict(img), **window_counts(counter, img, side, windows)))
    df = pd.DataFrame(rows)
    err = df.drop(columns=['shape', 'true']).sub(df['true'], axis=0)
    return pd.concat([err.abs().groupby(df['shape']).mean().add_suffix(' MAE'), err.groupby(df['shape']).mean().add_suffix(' bias')], axis=1).round(2)

@call_parse
def main(model:str, # Run folder of a model with a count map
         windows:str='1,1.4,2', # Window sizes to compare, in training images a side
         n:int=12, # Mosaics with heads
         empty:int=4, # Empty mosaics
         wide:int=40, # Wide fields of each shape
         seed:int=70000, # Their seed, unlike the localisation benchmark's
         root:str='/tmp/flowers-tiles', # Where the fresh fields go
         out:str='tiles', # Results name in benchmarks/results
        ):
    "Count fresh mosaics and wide fields by tiles with windows of several sizes"
    counter = load_counter(model, precision='fp32')
    ws = [float(w) for w in windows.split(',')]
    df = mosaic_table(counter, root, ws, n, seed, empty)
    full = df[df['true']>0]
    rel = full.drop(columns='true').div(full['true'], axis=0) - 1
    summary = pd.DataFrame({'mean abs error %': 100*rel.abs().mean(), 'within 10%': (rel.abs() <= .1).sum(), 'mean error %': 100*rel.mean(),
                            'empty mosaic count': df[df['true']==0].drop(columns='true').mean()}).round(2)
    w = wide_table(counter, ws, wide, seed)
    res = dict(run=str(model), window_default=flowers.counter.WINDOW, size=counter.size, stride=counter.stride, mosaics=summary.to_dict('index'),
               mosaic_counts=df.round(1).to_dict('records'), wide=w.to_dict('index'))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS/f'{out}.json').write_text(json.dumps(res, indent=2))
    print(summary.to_string(), '\n', w.to_string(), sep='')
