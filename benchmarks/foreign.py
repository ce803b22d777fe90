"""Flower fields drawn by a second, independent renderer (matplotlib), in styles `flowers.synth` never draws: a test set, never for training.

`flowers.synth`'s held-out families still share its way of drawing (PIL polygons, its light and noise). This renderer shares none of
its code, shapes, colours or backgrounds, so a model measured here meets a drawing style it never saw, as the photos of users do.
Only for measuring: what wins here earns nothing unless it also wins on the generalisation benchmark's held-out families.
"""
import json, math, time, numpy as np, pandas as pd
from io import BytesIO
from pathlib import Path
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from matplotlib.collections import EllipseCollection, LineCollection
from matplotlib.patches import Circle, Ellipse, Polygon
from PIL import Image, ImageFilter
from fastcore.script import call_parse

STYLES = ('daisy','blossom','rose','bell','pompom','bokeh','sketch') # heads
LAYOUTS = ('scattered','perspective','dense') # apart at one scale; shrinking and foreshortened towards the top, as a field photographed at an angle; touching
GROUNDS = ('meadow','soil','gravel','moss','paper') # backgrounds
RESULTS = Path(__file__).parent/'results'

def _fractal(rng, h, w, beta=2.):
    "1/f^beta noise in 0..1: natural-looking texture, unlike the generator's value noise"
    fy,fx = np.fft.fftfreq(h)[:,None],np.fft.rfftfreq(w)[None]
    amp = 1/np.maximum(np.hypot(fy, fx), 1/max(h,w))**(beta/2)
    z = np.fft.irfft2(amp*np.exp(2j*np.pi*rng.random(amp.shape)), s=(h,w))
    return (z-z.min())/(np.ptp(z)+1e-9)

def _ground(rng, ax, kind, w, h):
    "Draw background `kind` on `ax` (pixel coordinates)"
    if kind=='paper':
        c0,c1 = rng.uniform(.75, 1, 3),rng.uniform(.6, .95, 3)
        t = np.linspace(0, 1, w)[None,:,None]*np.ones((h,1,1))
        ax.imshow(c0*(1-t)+c1*t, extent=(0,w,h,0))
        return
    base = dict(meadow=(.25,.45,.12), soil=(.35,.24,.14), gravel=(.55,.52,.48), moss=(.12,.28,.1))[kind]
    n = _fractal(rng, h, w, rng.uniform(1.5, 2.5))[...,None]
    ax.imshow(np.clip(np.array(base)*(.6+.8*n)*rng.uniform(.85, 1.15, 3), 0, 1), extent=(0,w,h,0))
    if kind=='meadow': # dense grass blades in many greens
        k = int(rng.integers(150, 500)); x,y = rng.random(k)*w,rng.random(k)*h; a = rng.uniform(-2.2, -.9, k); ln = rng.uniform(5, 20, k)
        segs = np.stack([np.stack([x,y],1), np.stack([x+ln*np.cos(a), y+ln*np.sin(a)],1)], 1)
        ax.add_collection(LineCollection(segs, colors=np.clip(rng.normal((.3,.55,.15), .08, (k,3)), 0, 1), linewidths=rng.uniform(.5, 1.5)))
    elif kind=='soil': # crumbs and cracks
        k = int(rng.integers(100, 400))
        ax.scatter(rng.random(k)*w, rng.random(k)*h, s=rng.uniform(.5, 4, k), c=np.clip(rng.normal((.25,.17,.1), .06, (k,3)), 0, 1), linewidths=0)
        for _ in range(int(rng.integers(0, 5))):
            p = np.cumsum(rng.normal(0, 6, (12,2)), 0) + rng.random(2)*(w,h)
            ax.plot(*p.T, color=(.15,.1,.06), lw=rng.uniform(.5, 1.5))
    elif kind=='gravel': # shaded grey and beige stones
        k = int(rng.integers(60, 250)); s = rng.uniform(3, 14, k)
        ax.add_collection(EllipseCollection(s, s*rng.uniform(.5, .9, k), rng.uniform(0, 180, k), units='xy', offsets=rng.random((k,2))*(w,h),
                                            offset_transform=ax.transData, facecolors=np.clip(rng.normal(.55, .1, (k,1))*rng.uniform(.9, 1.1, (k,3)), 0, 1),
                                            edgecolors=(.3,.3,.3), linewidths=.4))
    elif kind=='moss': # small round cushions
        k = int(rng.integers(100, 400))
        ax.scatter(rng.random(k)*w, rng.random(k)*h, s=rng.uniform(4, 30, k), c=np.clip(rng.normal((.2,.4,.15), .07, (k,3)), 0, 1), linewidths=0)

def _hue(rng):
    "A flower colour: whites, yellows, pinks, purples, reds, blues"
    return np.clip(np.array([(1,1,1),(1,.85,.1),(1,.45,.7),(.6,.3,.8),(.85,.1,.15),(.35,.5,1),(1,.55,.1)][rng.integers(7)])*rng.uniform(.85, 1, 3), 0, 1)

def _head(rng, ax, style, x, y, r, col):
    "Draw one head of `style`, radius about `r`, centred at (x, y)"
    dark = col*.45
    if style=='daisy':
        n = int(rng.integers(12, 25)); t0 = rng.uniform(0, 2*math.pi)
        for a in t0 + np.arange(n)*2*math.pi/n:
            ax.add_patch(Ellipse((x+.55*r*math.cos(a), y+.55*r*math.sin(a)), r*.9, r*.22, angle=math.degrees(a), fc=col, ec=dark, lw=.3))
        ax.add_patch(Circle((x,y), r*.28, fc=(.95,.75,.1) if col.mean()>.9 else (.3,.2,.05), ec='none'))
    elif style=='blossom': # five rounded lobes and stamens
        t = np.linspace(0, 2*math.pi, 80); rr = r*(.65 + .35*np.abs(np.cos(2.5*(t + rng.uniform(0, 1)))))
        ax.add_patch(Polygon(np.stack([x+rr*np.cos(t), y+rr*np.sin(t)], 1), fc=col, ec=dark, lw=.5))
        k = int(rng.integers(5, 12)); a = rng.uniform(0, 2*math.pi, k); d = rng.uniform(0, .3*r, k)
        ax.scatter(x+d*np.cos(a), y+d*np.sin(a), s=max(.5, r*.15)**2, c=[(.9,.8,.2)], linewidths=0)
    elif style=='rose': # nested arcs spiralling in
        for i in range(int(rng.integers(4, 8))):
            f = 1-i*.13
            if f<=.1: break
            ax.add_patch(Circle((x+rng.normal(0, .04*r), y+rng.normal(0, .04*r)), r*f, fc=np.clip(col*(1-.08*i), 0, 1), ec=dark, lw=.6))
    elif style=='bell': # a cup seen from the side, three points on top
        w2 = r*.8
        p = [(x-w2, y-r*.6), (x-w2*.5, y-r*.25), (x, y-r*.7), (x+w2*.5, y-r*.25), (x+w2, y-r*.6), (x+w2*.8, y+r*.4), (x, y+r*.75), (x-w2*.8, y+r*.4)]
        ax.add_patch(Polygon(p, fc=col, ec=dark, lw=.6))
    elif style=='pompom': # one ball of many florets
        k = int(rng.integers(30, 80)); a = rng.uniform(0, 2*math.pi, k); d = r*np.sqrt(rng.random(k))*.85
        shade = np.clip(col[None]*(1-.4*(d/r))[:,None], 0, 1)
        ax.scatter(x+d*np.cos(a), y+d*np.sin(a), s=(r*.35)**2, c=shade, edgecolors=dark[None], linewidths=.2)
    elif style=='bokeh': # soft, out of focus, with a bright middle
        for f,al in ((1., .35), (.75, .5), (.5, .8), (.25, 1.)):
            ax.add_patch(Circle((x,y), r*f, fc=np.clip(col*(.7+.3*(1-f)) + .15*(1-f), 0, 1), ec='none', alpha=al))
    elif style=='sketch': # line art: outlined petals, pale fill
        n = int(rng.integers(5, 9)); t0 = rng.uniform(0, 2*math.pi)
        for a in t0 + np.arange(n)*2*math.pi/n:
            ax.add_patch(Ellipse((x+.5*r*math.cos(a), y+.5*r*math.sin(a)), r, r*.5, angle=math.degrees(a), fc=np.clip(col*.3+.7, 0, 1), ec=(.1,.1,.1), lw=1.))
        ax.add_patch(Circle((x,y), r*.25, fc=col, ec=(.1,.1,.1), lw=1.))

def _distractors(rng, ax, w, h, r0):
    "Leaves, stones and stems that are not heads"
    for _ in range(int(rng.integers(0, 8))):
        ax.add_patch(Ellipse(rng.random(2)*(w,h), r0*rng.uniform(1.5, 3.5), r0*rng.uniform(.5, 1), angle=rng.uniform(0, 180),
                             fc=np.clip(rng.normal((.2,.5,.15), .08), 0, 1), ec=(.1,.25,.05), lw=.5))
    for _ in range(int(rng.integers(0, 5))):
        g = rng.uniform(.35, .65)
        ax.add_patch(Ellipse(rng.random(2)*(w,h), r0*rng.uniform(.8, 1.8), r0*rng.uniform(.5, 1.2), angle=rng.uniform(0, 180), fc=(g,g*.97,g*.92), ec=(g*.6,)*3, lw=.5))

def _scale(layout, y, h):
    "Size of a head at height `y` relative to the field's typical head: 0.35x at the top to 1.4x at the bottom in perspective"
    return .35 + 1.05*y/h if layout=='perspective' else 1.

def _place(rng, n, w, h, r0, layout='scattered'):
    "Centres and radii of `n` heads: apart, or touching for `layout` 'dense'; smaller towards the top in 'perspective'"
    gap = .65 if layout=='dense' else .9
    for _ in range(50):
        rs,xy = [],[]
        for _ in range(n):
            for _ in range(60):
                p = rng.uniform((0, 0), (w, h))
                r = r0*rng.uniform(.8, 1.2)*_scale(layout, p[1], h)
                p = np.clip(p, r*.7, (w-r*.7, h-r*.7))
                if all(math.hypot(*(p-q)) > gap*(r+s) for q,s in zip(xy, rs)): xy.append(p); rs.append(r); break
            else: break
        if len(xy)==n: return np.array(xy).reshape(-1,2),rs
        r0 *= .9
    raise RuntimeError(f"can't place {n} heads")

def _slant(artists, ax, x, y, k):
    "Squash `artists` vertically by `k` about (x, y)"
    t = matplotlib.transforms.Affine2D().translate(-x, -y).scale(1, k).translate(x, y)
    for a in artists:
        if isinstance(a, (Polygon, Ellipse)): a.set_transform(t + ax.transData)
        else: # a scatter: move its points, keep its markers
            o = a.get_offsets(); a.set_offsets(np.stack([o[:,0], y + (o[:,1]-y)*k], 1))

def foreign_field(count, seed, style=None, ground=None, layout=None,
                  head=None, # Head radius as a share of the shorter side (default: 0.05..0.16 at random); e.g. 0.3 for a close-up
                 ):
    "One field: (PIL image, head style, ground, layout)"
    rng = np.random.default_rng(seed)
    w,h = (int(v) for v in rng.integers(180, 321, 2))
    style = style or STYLES[rng.integers(len(STYLES))]
    ground = ground or GROUNDS[rng.integers(len(GROUNDS))]
    layout = layout or LAYOUTS[rng.integers(len(LAYOUTS))]
    fig = plt.figure(figsize=(w/100, h/100), dpi=100)
    ax = fig.add_axes((0,0,1,1)); ax.set_xlim(0, w); ax.set_ylim(h, 0); ax.axis('off')
    _ground(rng, ax, ground, w, h)
    r0 = min(w,h)*(head or rng.uniform(.05, .16))
    _distractors(rng, ax, w, h, r0)
    xy,rs = _place(rng, count, w, h, r0, layout) if count else (np.zeros((0,2)), [])
    col = _hue(rng)
    for (x,y),r in zip(xy, rs):
        if rng.random()<.6: ax.plot([x, x+rng.normal(0, r)], [y, y+r*rng.uniform(2, 4)], color=(.2,.45,.1), lw=max(1., r/8), zorder=1)
        # in perspective a head is seen at a slant: squashed vertically about its centre
        before = set(map(id, ax.patches)) | set(map(id, ax.collections))
        _head(rng, ax, style, x, y, r, np.clip(col*rng.uniform(.9, 1.1, 3), 0, 1))
        if layout=='perspective': _slant([a for a in (*ax.patches, *ax.collections) if id(a) not in before], ax, x, y, .45 + .5*y/h)
    buf = BytesIO(); fig.savefig(buf, format='png', dpi=100); plt.close(fig)
    img = Image.open(buf).convert('RGB').resize((w,h))
    g = np.linspace(rng.uniform(.7, 1), rng.uniform(.9, 1.2), w)[None,:,None] # sunlight from one side
    img = Image.fromarray(np.clip(np.asarray(img, np.float32)*g, 0, 255).astype(np.uint8))
    if rng.random()<.3: img = img.filter(ImageFilter.GaussianBlur(rng.uniform(.5, 1.2)))
    return img,style,ground,layout

def make_foreign(path, # Folder for counts.csv and images/
                 n=300, # Fields with 0..max_count heads
                 n_empty=20, # Empty fields of each ground
                 max_count=20, # Largest count
                 seed=1000, # First seed
                ):
    "Write the foreign test set: `n` fields with uniform counts, and empty fields of every ground"
    path = Path(path); (path/'images').mkdir(parents=True, exist_ok=True)
    rows,rng = [],np.random.default_rng(seed)
    jobs = [(int(rng.integers(0, max_count+1)), None) for _ in range(n)] + [(0, g) for g in GROUNDS for _ in range(n_empty)]
    for i,(c,g) in enumerate(jobs):
        img,style,ground,layout = foreign_field(c, seed+i, ground=g)
        fn = f"{i:05d}.jpg"
        img.save(path/'images'/fn, quality=int(np.random.default_rng(seed+i).integers(60, 96)))
        rows.append(dict(image=fn, count=c, style=style if c else '', ground=ground, layout=layout if c else '', empty_set=g is not None))
    df = pd.DataFrame(rows); df.to_csv(path/'counts.csv', index=False)
    return df

def measure(counter, # A `flowers.predict.Counter`
            path, # The foreign set's folder (`make_foreign`)
           ) -> dict:
    "MAE, bias and empty-field counts of `counter` on the foreign set at `path`"
    df = pd.read_csv(Path(path)/'counts.csv')
    df['predicted'] = np.asarray(counter.predict_batch([Path(path)/'images'/f for f in df['image']]), float)
    m,e = df[~df.empty_set],df[df.empty_set]
    err = m.predicted - m['count']
    return dict(mae=float(err.abs().mean()), bias=float(err.mean()), mean_mae=float((m['count']-m['count'].mean()).abs().mean()),
                by_style={s:round(float(g.abs().mean()), 2) for s,g in err.groupby(m['style']) if s},
                by_layout={s:round(float(g.abs().mean()), 2) for s,g in err.groupby(m['layout']) if s},
                empty={g:round(float(v.mean()), 2) for g,v in e.groupby('ground').predicted})

def foreign_set(path, n=300):
    "The foreign set's folder, made first if absent"
    if not (Path(path)/'counts.csv').is_file():
        t = time.time(); make_foreign(path, n=n); print(f"made the foreign set in {path} in {time.time()-t:.0f} s")
    return Path(path)

ZOOMS = {1: 'as is', 2: 'shrunk to half'} # how close-ups are counted: `tile` this many times the longer side, or plainly for 1

def closeups(counter, # A `flowers.predict.Counter`
             heads=(.12, .2, .28, .36), # Head radii to try, as shares of the shorter side (the generator's reach 0.24)
             n=40, # Fields of 1..4 scattered heads for each
             seed=5000, # First seed
            ) -> dict:
    "MAE and bias, for each of `ZOOMS`, of the count in fields of 1..4 heads of each size in `heads`: how far past the training's head sizes counting holds"
    errs = {z:{} for z in ZOOMS}
    for r in heads:
        for i in range(n):
            try: img,*_ = foreign_field(1 + i%4, seed+i, layout='scattered', head=r)
            except RuntimeError: continue # heads too large to place apart in this frame
            for z in ZOOMS: errs[z].setdefault(r, []).append(counter.predict(img, tile=round(max(img.size)*z) if z>1 else None) - (1 + i%4))
    return {ZOOMS[z]: {r: dict(n=len(e), mae=round(float(np.abs(e).mean()), 2), bias=round(float(np.mean(e)), 2)) for r,e in d.items()}
            for z,d in errs.items()}

def draw_picture(fname, # Image file to write
                 seed=0, # First seed
                 cell=(160, 120), # Size of each field in the picture
                ):
    "One field of each head style (rows) in each layout (columns), with 12 heads each"
    w,h = cell
    grid = Image.new('RGB', (w*len(LAYOUTS), h*len(STYLES)))
    for i,style in enumerate(STYLES):
        for j,layout in enumerate(LAYOUTS):
            grid.paste(foreign_field(12, seed + i*len(LAYOUTS) + j, style, layout=layout)[0].resize(cell, Image.LANCZOS), (j*w, i*h))
    grid.save(fname, quality=85)

def _table(rows) -> str:
    "A markdown table of the results, one row per model"
    lines = ['| model | MAE | bias | scattered / perspective / dense | worst style | empty fields: mean, largest (ground) |', '|---|---|---|---|---|---|']
    for r in rows:
        l,e = r['by_layout'],r['empty']
        s,g = max(r['by_style'], key=r['by_style'].get),max(e, key=e.get)
        lines.append(f"| {r['run']} | {r['mae']:.2f} | {r['bias']:+.2f} | {l['scattered']:.2f} / {l['perspective']:.2f} / {l['dense']:.2f} | "
                     f"{s} {r['by_style'][s]:.2f} | {np.mean(list(e.values())):.2f}, {e[g]:.2f} ({g}) |")
    return '\n'.join(lines)

@call_parse
def main(runs:str='', # Run folders to measure, comma-separated
         path:str='/tmp/flowers-foreign', # Where the foreign set is (made if absent)
         n:int=300, # Fields with heads
         out:str='foreign', # Results name in benchmarks/results
         picture:bool=False, # Also draw benchmarks/results/foreign.jpg: each style in each layout
         closeup:bool=False, # Instead: close-ups of 1..4 heads, counted as they are and shrunk to half (`tile` twice the longer side)
        ):
    "Make the foreign-style test set if absent, and measure each run's model on it"
    from flowers.counter import load_counter
    if closeup:
        res = {run: closeups(load_counter(run, precision='fp32')) for run in filter(None, runs.split(','))}
        (RESULTS/'closeups.json').write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=1))
        return
    path,rows = foreign_set(path, n),[]
    if picture: draw_picture(RESULTS/'foreign.jpg')
    for run in filter(None, runs.split(',')):
        rows.append(dict(run=f"{Path(run).parent.name}/{Path(run).name}", **measure(load_counter(run, precision='fp32'), path)))
        print(json.dumps(rows[-1]), flush=True)
        (RESULTS/f'{out}.json').write_text(json.dumps(rows, indent=2)) # after each: a long run stopped early keeps what it measured
        (RESULTS/f'{out}.md').write_text(_table(rows) + '\n')
    print(_table(rows))
