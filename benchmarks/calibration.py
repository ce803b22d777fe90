"""How sure is a trained model, honestly? Interval coverage on fresh images, and which images it flags as unusual.

    python benchmarks/calibration.py --model models/run-...    # a run folder (default: trains the default recipe first)

On a fresh synthetic set (a new seed, the training styles): coverage and mean width of the 90% intervals, and the share
flagged unusual. On fields of single family pairs, and, honestly, on the pairs that the generalisation benchmark's models
never saw in training (run `benchmarks/generalisation.py` first): the same. On images unlike any training image (noise, solid
colours, text, documents, greyscale micrograph-like blobs, other synthetic domains): the share flagged.
Writes `benchmarks/results/calibration.{json,md}`.
"""
import json, sys, numpy as np, pandas as pd
from pathlib import Path
from PIL import Image, ImageDraw, ImageFilter
from fastcore.script import call_parse
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flowers.synth import make_flowers, is_current
from flowers.predict import load_counter, predict_table

RESULTS = Path(__file__).parent/'results'

def probes(n=40, size=128, seed=0) -> dict:
    "Images unlike flower fields, `n` of each kind: what an unusual-image flag must catch"
    rng = np.random.default_rng(seed)
    def noise(): return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    def solid(): return Image.new('RGB', (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    def text():
        im = Image.new('RGB', (size, size), 'white'); d = ImageDraw.Draw(im)
        for y in range(4, size-8, 10): d.text((4, y), ''.join(rng.choice(list('abcdefghij klmnopqrstuvwxyz'), 24)), fill='black')
        return im
    def document():
        im = Image.new('RGB', (size, int(size*1.4)), (250, 250, 245)); d = ImageDraw.Draw(im)
        for y in range(10, im.height-10, 7): d.line((10, y, 10+int(rng.integers(40, size-20)), y), fill=(60, 60, 60), width=2)
        d.rectangle((12, 12, size//2, 40), outline='black')
        return im
    def micrograph():
        a = np.zeros((size, size), np.float32)
        yy,xx = np.mgrid[:size, :size]
        for _ in range(int(rng.integers(5, 40))):
            x,y,r = rng.uniform(0, size, 2).tolist() + [rng.uniform(3, 9)]
            a += np.exp(-((xx-x)**2 + (yy-y)**2)/(2*r*r))
        a = a/a.max()*255 if a.max() > 0 else a
        return Image.fromarray(a.astype(np.uint8)).convert('RGB').filter(ImageFilter.GaussianBlur(1))
    def stripes():
        a = (np.sin(np.arange(size)[:, None]/rng.uniform(2, 8) + np.arange(size)[None]/rng.uniform(2, 8))*127+128).astype(np.uint8)
        return Image.fromarray(np.stack([a, np.roll(a, 7, 0), np.roll(a, 13, 1)], -1))
    def checker():
        k = int(rng.integers(4, 16)); a = ((np.arange(size)[:, None]//k + np.arange(size)[None]//k) % 2 * 255).astype(np.uint8)
        return Image.fromarray(a).convert('RGB')
    kinds = dict(noise=noise, solid_colour=solid, text=text, document=document, micrograph_blobs=micrograph, stripes=stripes, checkerboard=checker)
    return {k: [f() for _ in range(n)] for k,f in kinds.items()}

def _measure(counter, items, counts=None, level=0.9) -> dict:
    "Coverage and width of the `level` intervals (when the true counts are known), and the share flagged unusual"
    df = predict_table(counter, items, show_progress=False, level=level)
    r = dict(n=len(df), flagged=round(float(df['unusual'].mean()), 3))
    if counts is not None:
        inside = (counts >= df['low']) & (counts <= df['high'])
        r.update(coverage=round(float(inside.mean()), 3), mean_width=round(float((df['high']-df['low']).mean()), 2),
                 mae=round(float((df['count']-counts).abs().mean()), 3))
    return r

def _synth(root, name, **kw):
    "A synthetic set under `root`, drawn once by this generator with these settings (an older one's is drawn again)"
    d = root/name
    csv = d/'counts.csv' if is_current(d, **kw) else make_flowers(d, show_progress=False, **kw)
    return _read(csv)

def _read(csv):
    "Image paths and true counts of a data set's CSV"
    df = pd.read_csv(csv)
    return [Path(csv).parent/'images'/f for f in df['image']],df['count'].to_numpy(np.float64)

@call_parse
def main(model:str=None, # Run folder of a trained model (default: train the default recipe into benchmarks/.runs/default)
         n:int=1000, # Images in the fresh set (half that in each held-out one): at 400, chance alone moves a 90% coverage by ±0.03, the whole band
         root:str='/tmp/flowers-calibration', # Where the fresh sets are drawn
         generalisation:str='/tmp/flowers-generalisation', # `benchmarks/generalisation.py`'s root: its models, each tested on the pair it never saw
        ):
    "Coverage of the 90% intervals on fresh images, and unusual-image flags on in- and out-of-distribution images"
    root = Path(root)
    if model is None:
        from flowers.train import train
        model = Path(__file__).parent/'.runs'/'default'
        if not (model/'model.json').exists(): train(out=model)
    counter = load_counter(model, precision='fp32')
    res = dict(model=str(model), level=0.9, sets={})
    res['sets']['fresh, training styles (seed 12345)'] = _measure(counter, *_synth(root, f'fresh-{n}', n=n, seed=12345))
    for head,bg in (('cluster','pebbles'), ('star','foliage')): # families this model trained on, one pair at a time
        res['sets'][f'one pair of families only: {head} + {bg}'] = _measure(counter, *_synth(root, f'{head}-{bg}-{n//2}', n=n//2, seed=777, heads=[head], backgrounds=[bg]))
    for d in sorted(Path(generalisation).glob('*-*')): # the honest test: models that never saw the pair, calibrated on their own validation
        if (d/'run-default'/'model.json').exists() and (d/'test'/'counts.csv').exists():
            res['sets'][f"held out of training: {d.name.replace('-', ' + ')} (generalisation benchmark's model)"] = _measure(
                load_counter(d/'run-default', precision='fp32'), *_read(d/'test'/'counts.csv'))
    imgs = probes()
    for k,v in imgs.items(): res['sets'][f'probe: {k}'] = _measure(counter, v)
    all_probes = [i for v in imgs.values() for i in v]
    res['probes flagged, all kinds'] = _measure(counter, all_probes)['flagged']
    RESULTS.mkdir(exist_ok=True)
    (RESULTS/'calibration.json').write_text(json.dumps(res, indent=2))
    rows = ['| set | images | MAE | 90% coverage | mean width | flagged unusual |', '|---|---|---|---|---|---|']
    rows += [f"| {k} | {v['n']} | {v.get('mae', '')} | {v.get('coverage', '')} | {v.get('mean_width', '')} | {v['flagged']} |" for k,v in res['sets'].items()]
    (RESULTS/'calibration.md').write_text('\n'.join(rows) + f"\n\nAll probes flagged: {res['probes flagged, all kinds']}\n")
    print('\n'.join(rows)); print('all probes flagged:', res['probes flagged, all kinds'])
