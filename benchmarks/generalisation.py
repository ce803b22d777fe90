"""Does counting transfer to flowers and grounds never seen in training? Leave families out, test on them.

For each held-out (head family, background family) pair: train on fields drawn without either, then count fields drawn
only from them, and empty fields of every background family; and then the fields of another renderer (`foreign.py`),
in a style the generator never draws. Several recipes run side by side on the same data.

    python benchmarks/generalisation.py                        # the default recipe, three held-out pairs
    python benchmarks/generalisation.py --recipes default,jitter --pairs cluster:pebbles
    python benchmarks/generalisation.py --seeds 0,1            # each pair twice, with other data and another initialisation
"""
import json, sys, time, numpy as np, pandas as pd
from pathlib import Path
from fastcore.script import call_parse
sys.path.insert(0, str(Path(__file__).resolve().parents[1])); sys.path.insert(0, str(Path(__file__).resolve().parent))
from flowers.synth import make_flowers, HEADS, BACKGROUNDS
from flowers.train import train
from flowers.settings import default_schedule, MINUTES
from flowers.precision import resolve_precision
from fastai.torch_core import default_device
from flowers.predict import Counter
from flowers.report import count_metrics
from flowers.augment import JITTER_AUG
from foreign import foreign_set, measure

RESULTS = Path(__file__).parent/'results'
# Recipes compared; each is a set of `train` arguments over the defaults
RECIPES = dict(
    default = dict(),
    plainhead = dict(context=0), # the count map's head without dilated layers: the default before this one
    map16 = dict(stride=16, epochs=10), # the count map one cell per 16 pixels: the default before this one
    r34 = dict(arch='resnet34', epochs=6), # resnet34 in the same time as the default
    pool = dict(head='pool'), # fastai's pooled head, trained from counts alone
    jitter = dict(aug=JITTER_AUG), # the previous default: also zoom-out, colour, blur, noise
    noaug = dict(aug=False),
    squash = dict(aug=dict(min_aspect=.6)), # also the width or the height squashed to 0.6..1 of it: heads seen at an angle
    squash8 = dict(aug=dict(min_aspect=.8)), # the same to 0.8..1: it helped held-out tilted heads at 96 px with the plain head; with today's default it made them worse (benchmarks/README.md)
    bs16 = dict(bs=16, epochs=30, lr=3e-3), # the bf16 schedule before batches of 32
    lr6 = dict(lr=6e-3), # Adam's lr grown with the batch, not its square root
    ibn = dict(norm='ibn'), # IBN-a blocks (`flowers.ibn`), measured before they became the default in bf16
    ibn30 = dict(norm='ibn', epochs=30), # the same in about the time of batch norm's 36 epochs: it lost on star+foliage (benchmarks/README.md)
    bn = dict(norm='bn'), # torchvision's batch norm throughout: the default before IBN
    stem2 = dict(stem=2), # torchvision's stem at 80 px: the CPU's default before the stem of 3 (the rows 'ibn' of results/generalisation_ibn*.json)
    stem3 = dict(stem=3), # the first convolution stepping 3 pixels, at 120 px: the CPU's default since (results/generalisation_stem3*.json, run as a /tmp patch of the same)
    lr3 = dict(lr=3e-3), # the default's lr, 4e-3, chosen with torchvision's stem: 3e-3 with the stem of 3
    stem4 = dict(stem=4), # the first convolution stepping 4 pixels, at 160 px: the GPU's schedule (results/generalisation_stem4*.json, run as a /tmp patch of the same)
    stem4e28 = dict(stem=4, epochs=28), # the same in 28 epochs, about the no-flag run's 5 minutes on a 2-core CPU: its epochs take a fifth longer than at 80 px
    stem4s144 = dict(stem=4, size=144), # the stem of 4 at 144 px (a 9 x 9 map), 36 epochs
    fp32 = dict(precision='fp32'), # the schedule of CPUs without native bf16 (64 px, batches of 16, no context), as it is: 24 epochs since they were fitted to the minutes, 14 in the rows before
    fp32bn = dict(precision='fp32', norm='bn', epochs=15), # that schedule before IBN: the rows named 'fp32' in results/generalisation_fp32ibn*.json
    fp32ibn = dict(precision='fp32', norm='ibn', epochs=15), # IBN blocks in its 15 epochs: slower (benchmarks/README.md)
    fp32ibn14 = dict(precision='fp32', norm='ibn', epochs=14), # in 14, about batch norm's time for 15: the fp32 default since
    fp32stem3 = dict(precision='fp32', stem=3), # the fp32 schedule with the stem of 3, at 96 px: the maps of 64 px
    fp32stem3e13 = dict(precision='fp32', stem=3, epochs=13), # the same in 13 epochs, for the time the stem of 3 costs
    fp32e24 = dict(precision='fp32', epochs=24), # the fp32 schedule in the 24 epochs its no-flag run fits 5 minutes on an EPYC without AVX-512
    fp32stem3e22 = dict(precision='fp32', stem=3, epochs=22), # the stem of 3 at 96 px in the epochs that fit the same minutes there
    fp32stem4e22 = dict(precision='fp32', stem=4, epochs=22), # the stem of 4 at 128 px (the maps of 64 px): 7% slower an epoch than the stem of 2 in fp32, so 22 epochs for its 24
    fp32bs32e26 = dict(precision='fp32', bs=32, lr=4e-3, epochs=26), # batches of 32 at the bf16 schedule's lr: 8% less time an image in fp32 (5.4 ms against 5.9), so 26 epochs for 24
    # the no-flag run's epochs: those that fit its minutes on this machine as it runs (timed, cut or stretched), less the time
    # the training fields took to draw, as a no-flag run draws its own
    fitted = dict(epochs=None),
    s108e31 = dict(stem=3, size=108, epochs=31), # the stem of 3 at 108 px (a 9 x 9 map): a fifth fewer pixels, so 31 epochs in the time of 25 at 120 px
)

def _count(counter, csv):
    "True and predicted counts for every image of `csv`"
    df = pd.read_csv(csv)
    return df['count'].to_numpy(), counter.predict_batch([csv.parent/'images'/f for f in df['image']])

def empty_sets(root, # Folder the sets go in, one `empty-BACKGROUND` each
               n, # Fields of each background
               seed, # Their seed
              ) -> dict:
    "`{background: counts.csv}` of `n` fields without a head for every background family"
    return {b: make_flowers(root/f'empty-{b}', n=n, max_count=0, seed=seed, backgrounds=[b], show_progress=False) for b in BACKGROUNDS}

def empty_counts(counter, sets) -> dict:
    "`{background: mean count}` of `counter` on `empty_sets`: each should be 0"
    return {b: float(_count(counter, c)[1].mean()) for b,c in sets.items()}

def run_pair(head, bg, recipes, root, n, n_test, n_empty, seed, layouts='flat', **kw) -> list:
    "Train each recipe without `head` and `bg`, and measure it on them and on empty fields of every background"
    heads,bgs = [h for h in HEADS if h!=head],[b for b in BACKGROUNDS if b!=bg]
    d = root/(f'{head}-{bg}' + (f'-seed{seed}' if seed else '')) # seed 0 where the benchmark always kept it
    t = time.time()
    tr = make_flowers(d/'train', n=n, seed=seed, heads=heads, backgrounds=bgs, layouts=layouts, show_progress=False)
    drawn = time.time() - t
    te = make_flowers(d/'test', n=n_test, seed=seed+1, heads=[head], backgrounds=[bg], show_progress=False)
    empties = empty_sets(d, n_empty, seed+2)
    rows = []
    for name in recipes:
        t = time.time()
        r = {**kw, **RECIPES[name]}
        # the schedule's epochs, not those that fit this machine's minutes today: rows of other days and machines compare
        r.setdefault('epochs', default_schedule(resolve_precision(r.get('precision', 'auto'), default_device()), default_device())['epochs'])
        if r['epochs'] is None: r.setdefault('minutes', round(MINUTES - drawn/60, 2))
        learn = train(tr, out=d/f'run-{name}', overwrite=True, pretrained='no', seed=seed, **r)
        fit_s = time.time()-t
        valid = json.loads((d/f'run-{name}'/'metrics.json').read_text())
        counter = Counter.from_learner(learn, precision='fp32') # one for every set this model counts
        y,p = _count(counter, te)
        train_mean = float(pd.read_csv(tr)['count'].mean())
        empty = empty_counts(counter, empties)
        fr = measure(counter, foreign_set(root/'foreign'))
        rows.append(dict(recipe=name, held_out=f'{head}+{bg}', seed=seed, epochs=valid['epochs'], valid_mae=valid['mae'], held_out_mae=count_metrics(p, y)['mae'],
                         held_out_bias=float((p-y).mean()), constant_mae=float(np.abs(y-train_mean).mean()),
                         empty_max=max(empty.values()), empty=empty, foreign_mae=fr['mae'], foreign_bias=fr['bias'],
                         foreign_empty=float(np.mean(list(fr['empty'].values()))), seconds=round(fit_s, 1)))
        print(json.dumps(rows[-1]), flush=True)
    return rows

def _foreign(r): return f"{r['foreign_mae']:.2f}, {r['foreign_empty']:.2f}" if 'foreign_mae' in r else '' # rows from before it

def _means(rows) -> str:
    "Each recipe's measures averaged over its held-out pairs and seeds, as a markdown table"
    df = pd.DataFrame(rows)
    df['empty_mean'] = [np.mean(list(e.values())) for e in df['empty']]
    cols = [c for c in ('valid_mae','held_out_mae','empty_mean','foreign_mae','foreign_empty') if c in df]
    g = df.groupby('recipe', sort=False)
    lines = ['| recipe | runs | ' + ' | '.join(cols) + ' |', '|---|---|' + '---|'*len(cols)]
    for r,m in g[cols].mean().iterrows(): lines.append(f"| {r} | {g.size()[r]} | " + ' | '.join(f'{v:.2f}' for v in m) + ' |')
    return '\n'.join(lines)

def _table(rows) -> str:
    "A markdown table of the results, one row per recipe, held-out pair and seed, then the means"
    lines = ['| recipe | held out | valid MAE | held-out MAE | held-out bias | always-the-mean MAE | empty fields, largest mean (background) | foreign style MAE, empty | train s |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        b = max(r['empty'], key=r['empty'].get)
        seed = f" (seed {r['seed']})" if r.get('seed') else ''
        fitted = f" ({r['epochs']} epochs)" if r['recipe']=='fitted' else '' # each run its own
        lines.append(f"| {r['recipe']}{fitted} | {r['held_out']}{seed} | {r['valid_mae']:.2f} | {r['held_out_mae']:.2f} | {r['held_out_bias']:+.2f} | "
                     f"{r['constant_mae']:.2f} | {r['empty_max']:.2f} ({b}) | {_foreign(r)} | {r['seconds']:.0f} |")
    return '\n'.join(lines) + '\n\nMeans over pairs and seeds:\n\n' + _means(rows)

def write_results(rows, name='generalisation'):
    "Write `rows` to benchmarks/results/`name`.json and .md"
    (RESULTS/f'{name}.json').write_text(json.dumps(rows, indent=2))
    (RESULTS/f'{name}.md').write_text(_table(rows) + '\n')

@call_parse
def main(pairs:str='cluster:pebbles,star:foliage,tilted:grain', # Held-out head:background pairs, comma-separated
         recipes:str='default', # Recipes to compare (names in RECIPES), comma-separated
         root:str='/tmp/flowers-generalisation', # Where data sets and runs go
         n:int=2000, # Training images per held-out pair (as the default data set)
         n_test:int=200, # Held-out test images per pair
         n_empty:int=40, # Empty fields per background family
         seeds:str='0', # Data and training seeds, comma-separated: the held-out MAE of one pair moves by up to 0.3 between seeds
         out:str=None, # Results name in benchmarks/results (default: generalisation)
         epochs:int=None, # Override the recipes' epochs
         size:int=None, # Override the recipes' input size
         layouts:str='flat', # Layouts of the training fields; held-out and empty fields are flat, as in every earlier row
        ):
    "Leave-family-out training and testing of the training recipes"
    kw = {k:v for k,v in dict(epochs=epochs, size=size).items() if v is not None}
    rows,name = [],out or 'generalisation'
    RESULTS.mkdir(exist_ok=True)
    for seed in map(int, seeds.split(',')):
        for pair in pairs.split(','):
            h,b = pair.split(':')
            rows += run_pair(h, b, recipes.split(','), Path(root), n, n_test, n_empty, seed, layouts, **kw)
            write_results(rows, name) # after each pair: a long run stopped early keeps what it measured
    print(_table(rows))

