"""Are the count maps where the heads are? Scored against the generator's points.csv on a fresh synthetic set.

    python benchmarks/localisation.py RUN              # a trained model's maps
    python benchmarks/localisation.py RUN --picture    # and a picture of some maps in benchmarks/results/

Two scores per image with heads: the share of the map's mass within 1.5 radii of a true head centre (beside what a
uniform map scores, the area there), and the F1 of the map's peaks (its local maxima, the round(count) highest) matched
one to one to heads within 1.5 radii. "model" is `count_map` as users get it (a cell every 2 input pixels, from shifted
copies), "model_cells" the network's own cells (`fine=False`), and "cells" the best any map on those cells can do: each
head's count put exactly in the cells of its centre, then spread over the image as the model's maps are.
"""
import json, sys, torch, numpy as np, pandas as pd
from pathlib import Path
from fastcore.script import call_parse
from scipy.ndimage import maximum_filter
from scipy.optimize import linear_sum_assignment
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flowers.synth import make_flowers
from flowers.predict import load_counter
from flowers.density import point_targets
from flowers.stitch import spread_cells
from flowers.images import open_image
from flowers.progress import progress

RESULTS = Path(__file__).parent/'results'

def near_heads(pts:pd.DataFrame, w, h, k=1.5) -> np.ndarray:
    "Where a pixel is within `k` radii of a head centre: (h, w) bool"
    yy,xx = np.mgrid[:h, :w]
    near = np.zeros((h, w), bool)
    for x,y,r in pts[['x','y','r']].itertuples(index=False): near |= (xx+.5-x)**2 + (yy+.5-y)**2 <= (k*r)**2
    return near

def peaks(cmap:np.ndarray, n:int, footprint=5) -> np.ndarray:
    "The `n` highest local maxima of `cmap`, as (x, y) pixel centres"
    if n<=0: return np.zeros((0,2))
    top = (cmap==maximum_filter(cmap, size=footprint, mode='constant', cval=-1)) & (cmap>0)
    ys,xs = np.nonzero(top)
    best = np.argsort(-cmap[ys,xs])[:n]
    return np.stack([xs[best]+.5, ys[best]+.5], 1)

def peak_f1(found:np.ndarray, pts:pd.DataFrame, k=1.5) -> tuple:
    "(true positives, peaks, heads): peaks matched one to one to heads whose centre is within `k` of their radii"
    heads = pts[['x','y']].to_numpy()
    if not len(found) or not len(heads): return 0,len(found),len(heads)
    d = np.sqrt(((found[:,None]-heads[None])**2).sum(-1))
    ok = d <= k*pts['r'].to_numpy()[None]
    rows,cols = linear_sum_assignment(np.where(ok, d, 1e6))
    return int(ok[rows,cols].sum()),len(found),len(heads)

def cell_map(pts:pd.DataFrame, w, h, size, stride, pad=False) -> np.ndarray:
    "The best map on the model's cells: each head's count in the cells of its centre (as training teaches), spread like the model's"
    n = -(-size//stride)
    xy = pts[['x','y']].to_numpy('float32')
    if pad: xy = (xy - np.array([w,h])/2)/(max(w,h)/2) # the square input is the image padded equally on both sides
    else: xy = xy*2/np.array([w,h], 'float32') - 1
    cells = point_targets(torch.as_tensor(xy)[None], n, n)[0,0]
    return spread_cells(cells, w, h, pad=pad)

def score(maps, csv, max_heads=20) -> dict:
    "Mean mass share near heads, the uniform map's share, and pooled peak F1, over the images of `csv` with 1..`max_heads` heads"
    df,pts = pd.read_csv(csv),pd.read_csv(Path(csv).with_name('points.csv'))
    by = dict(list(pts.groupby('image')))
    mass,area,tp,npk,nh = [],[],0,0,0
    for f,c in progress(list(zip(df['image'], df['count']))):
        if not 0 < c <= max_heads: continue
        p = by[f]
        m = maps(Path(csv).parent/'images'/f, p)
        near = near_heads(p, m.shape[1], m.shape[0])
        mass.append(float(m[near].sum()/max(m.sum(), 1e-9))); area.append(float(near.mean()))
        t,a,b = peak_f1(peaks(m, int(round(float(m.sum())))), p)
        tp,npk,nh = tp+t,npk+a,nh+b
    prec,rec = tp/max(npk,1),tp/max(nh,1)
    return dict(images=len(mass), mass_near=float(np.mean(mass)), uniform_near=float(np.mean(area)),
                share_images_80=float(np.mean(np.array(mass)>=.8)), precision=prec, recall=rec, f1=2*prec*rec/max(prec+rec, 1e-9))

def save_picture(counter, csv, fname, n=6):
    "A few fresh images with their count maps and true head centres"
    import matplotlib.pyplot as plt
    from flowers.report import show_count_map, save_fig
    df,pts = pd.read_csv(csv),pd.read_csv(Path(csv).with_name('points.csv'))
    fig,axs = plt.subplots(2, n//2, figsize=(3.2*n//2, 6.6))
    for ax,(f,c) in zip(axs.flat, zip(df['image'], df['count'])):
        img = open_image(Path(csv).parent/'images'/f)
        show_count_map(img, counter.count_map(img), ax=ax, title=f'true {c} / map {counter.predict(img):.1f}')
        p = pts[pts['image']==f]
        ax.scatter(p['x']-.5, p['y']-.5, s=110, facecolors='none', edgecolors='cyan', linewidths=.7) # wide: the map's peak shows inside
    save_fig(fig, fname, dpi=90)

def mosaic(root, # Folder for its fields' data set
           seed, # Its fields' seed
           side=4, # Fields a side
           size=128, # Pixels a side of each field
           counts=(0, 20), # Fewest and most heads in a field, drawn uniformly
          ) -> tuple:
    "A side x side mosaic of fresh square fields as one image, its true total, and its fields' image files"
    from PIL import Image
    csv = make_flowers(Path(root)/f'mosaic-{seed}', n=side*side, size=size, seed=seed, vary_size=False, show_progress=False,
                       min_count=counts[0], max_count=counts[1])
    df = pd.read_csv(csv)
    files = [Path(csv).parent/'images'/f for f in df['image']]
    m = Image.new('RGB', (side*size, side*size))
    for i,f in enumerate(files): m.paste(Image.open(f).convert('RGB'), (size*(i%side), size*(i//side)))
    return m,int(df['count'].sum()),files

def mosaics(counter, root, n=4, side=4, size=128, seed=54321) -> list:
    "Counts by `tile` of `n` mosaics of side x side fresh fields (the last with 20 heads in every field), against their true totals and their fields counted one by one"
    rows = []
    for k in range(n):
        m,true,files = mosaic(root, seed+k, side, size, (20, 20) if k==n-1 else (0, 20))
        got = counter.predict(m, tile=size)
        # what the windows lose, apart from what the model misses in each field
        alone = float(sum(counter.predict_batch(files)))
        rows.append(dict(true=true, counted=got, error=(got-true)/true, fields_alone=alone))
    return rows

@call_parse
def main(model:str, # Run folder of a model with a count map (--head map)
         n:int=300, # Fresh images to score
         seed:int=12345, # Their seed, unlike any training set's
         root:str='/tmp/flowers-localisation', # Where the fresh set goes
         out:str='localisation', # Results name in benchmarks/results
         picture:bool=False, # Also save a picture of maps, results/`out`.png
        ):
    "Score a model's count maps against true head centres"
    counter = load_counter(model, precision='fp32')
    csv = make_flowers(Path(root)/f'fresh-{seed}', n=n, seed=seed, show_progress=False)
    st = counter.stride
    pad = counter.method=='pad'
    rows = dict(model=score(lambda f,p: counter.count_map(f), csv),
                model_cells=score(lambda f,p: counter.count_map(f, fine=False), csv),
                cells=score(lambda f,p: cell_map(p, *open_image(f).size, counter.size, st, pad), csv))
    res = dict(run=str(model), n=n, seed=seed, size=counter.size, stride=st, scores=rows, mosaics=mosaics(counter, root))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS/f'{out}.json').write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    if picture: save_picture(counter, csv, RESULTS/f'{out}.png')
