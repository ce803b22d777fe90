"""Synthetic flower fields: photos of flower heads in foliage with a known count per image."""
import math, numpy as np, pandas as pd
from io import BytesIO
from pathlib import Path
from PIL import Image, ImageDraw, ImageFilter
from fastcore.script import call_parse
from .progress import progress

__all__ = ['HEAD_TYPES', 'flower_field', 'make_flowers']

# Each head type: petal count range, petal shape, petal colours (RGB), centre colours, centre size
HEAD_TYPES = dict(
    daisy     = dict(n=(12,20), shape='ellipse', width=.22, cols=[(245,245,240),(250,205,225),(215,200,245)],
                     centre=[(240,190,30),(230,160,20)], c=.30),
    buttercup = dict(n=(5,5),   shape='round',   width=.55, cols=[(250,215,40),(245,120,170),(170,90,200)],
                     centre=[(120,90,20),(250,240,200)], c=.22),
    star      = dict(n=(5,8),   shape='pointed', width=.40, cols=[(60,90,220),(220,40,50),(250,250,250)],
                     centre=[(250,230,80),(255,255,255)], c=.18),
    sunflower = dict(n=(14,22), shape='pointed', width=.30, cols=[(250,190,20),(245,130,20)],
                     centre=[(80,45,20),(60,35,15)], c=.45),
    cosmos    = dict(n=(8,8),   shape='notched', width=.45, cols=[(235,80,150),(200,60,120),(250,170,200)],
                     centre=[(240,200,40)], c=.20),
)
_TYPES = list(HEAD_TYPES)
_SS = 2 # supersampling: draw at 2x, then downsample, for anti-aliased edges

def _petal_outline(shape, n_pts=10):
    "Unit petal along +x from 0 to 1, as an (n,2) polygon"
    t = np.linspace(0, 2*math.pi, 2*n_pts, endpoint=False)
    x,y = (1-np.cos(t))/2, np.sin(t)/2
    if shape=='round':   y = y*(0.6+0.8*x)
    if shape=='pointed': y = y*np.sin(math.pi*x)**0.6*(1.2-x*.5)
    if shape=='notched': x = x - 0.12*np.exp(-((y/.5)**2)/0.08)*(x>0.5)
    return np.stack([x,y], 1)

_PETALS = {k:_petal_outline(v['shape']) for k,v in HEAD_TYPES.items()}

def _jitters(rng, col, n, amt=25):
    "`n` copies of `col`, each with a little random variation, as int tuples"
    v = rng.integers(-amt, amt+1, (n,3)) + col
    return list(map(tuple, np.minimum(np.maximum(v, 0), 255).tolist())) # ufuncs: np.clip's overhead dominates here

def _jitter(rng, col, amt=25):
    "`col` with a little random variation, as an int tuple"
    return _jitters(rng, col, 1, amt)[0]

def _noise(rng, size, cells):
    "Smooth value noise in [0,1] at `size`, from a `cells`x`cells` random grid"
    g = Image.fromarray((rng.random((cells,cells))*255).astype(np.uint8))
    return np.asarray(g.resize((size,size), Image.BICUBIC), dtype=np.float32)/255

def _background(rng, sz):
    "Soil and grass mixed by smooth noise, with blades of grass drawn over it"
    soil  = np.array(_jitter(rng, (110,80,55), 20), np.float32)
    grass = np.array(_jitter(rng, (70,120,45), 25), np.float32)
    lo = sz//_SS # texture at output resolution is all that survives the final downsampling
    mix = np.clip((_noise(rng, lo, 4)*0.7 + _noise(rng, lo, 12)*0.3 - 0.5)*3 + rng.uniform(-.3,.6), 0, 1)[...,None]
    fine = (_noise(rng, lo, lo//3) - 0.5)[...,None]*50 + rng.standard_normal((lo,lo,1), np.float32)*6
    arr = soil + (grass-soil)*mix + fine
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).resize((sz,sz), Image.NEAREST)
    d = ImageDraw.Draw(img)
    n = int(rng.integers(40, 160))
    xy,ang = rng.random((n,2))*sz, rng.uniform(-0.5, 0.5, n) - math.pi/2
    ln = rng.uniform(.03, .09, n)*sz
    ends = np.concatenate([xy, xy + ln[:,None]*np.stack([np.cos(ang), np.sin(ang)], 1)], 1).tolist()
    for e,c in zip(ends, _jitters(rng, (60,125,40), n, 35)): d.line(e, fill=c, width=max(1, sz//150))
    return img,d

def _leaf(rng, x, y, length, ang):
    "Leaf polygon at (x,y), `length` long, pointing at `ang`"
    t = np.linspace(0, 1, 12)
    w = length*rng.uniform(.18, .3)*np.sin(math.pi*t)
    pts = np.concatenate([np.stack([t*length, w],1), np.stack([t[::-1]*length, -w[::-1]],1)])
    c,s = math.cos(ang), math.sin(ang)
    return np.stack([x + pts[:,0]*c - pts[:,1]*s, y + pts[:,0]*s + pts[:,1]*c], 1).ravel().tolist()

def _head_polys(rng, kind, x, y, r):
    "Petal polygons, their colours and the centre disc of one flower head"
    ht = HEAD_TYPES[kind]
    n = int(rng.integers(ht['n'][0], ht['n'][1]+1))
    col = ht['cols'][rng.integers(len(ht['cols']))]
    rot = rng.uniform(0, 2*math.pi)
    petal = _PETALS[kind]*np.array([r, r*ht['width']*2*math.pi/n*1.4 if ht['shape']=='ellipse' else r*ht['width']])
    rings = 2 if kind=='sunflower' else 1
    ring = np.arange(n*rings)//n
    a = rot + 2*math.pi*(np.arange(n*rings) + ring*.5)/n + rng.normal(0, .05, n*rings)
    sc = ((1 - .15*ring)*rng.uniform(.9, 1.05, n*rings))[:,None,None]
    rot_m = np.stack([np.cos(a), np.sin(a), -np.sin(a), np.cos(a)], 1).reshape(-1,2,2)*sc
    polys = (petal[None] @ rot_m + (x,y)).reshape(n*rings, -1).tolist()
    cols = _jitters(rng, col, n*rings, 18)
    cr = r*ht['c']*rng.uniform(.85, 1.15)
    centre = (x-cr, y-cr, x+cr, y+cr), _jitter(rng, ht['centre'][rng.integers(len(ht['centre']))], 15)
    return polys, cols, centre

def _place(rng, n, sz, r_lo, r_hi):
    "Centres and radii of `n` heads, apart enough that each stays mostly visible"
    while True:
        rs = np.exp(rng.uniform(math.log(r_lo), math.log(r_hi), n))
        xy = np.zeros((n,2))
        for i,r in enumerate(rs):
            cand = rng.uniform(r*.6, sz-r*.6, (40,2)) # mostly inside the frame
            ok = (np.hypot(*(cand[:,None]-xy[None,:i]).transpose(2,0,1)) > .75*(r+rs[:i])).all(1)
            if not ok.any(): break
            xy[i] = cand[ok.argmax()]
        else: return list(zip(xy.tolist(), rs.tolist()))
        r_lo,r_hi = r_lo*.85,r_hi*.85

def _light(rng, sz, cells=8):
    "A smooth multiplicative lighting field: a gradient plus soft blotches"
    yy,xx = np.mgrid[0:cells,0:cells]/cells
    a = rng.uniform(0, 2*math.pi)
    f = rng.uniform(.75, 1.15) + (xx*math.cos(a) + yy*math.sin(a))*rng.uniform(-.5, .5)
    f = f + (rng.random((cells,cells)) - .5)*rng.uniform(0, .5)
    return np.asarray(Image.fromarray(f.astype(np.float32), 'F').resize((sz,sz), Image.BICUBIC))[...,None]

def flower_field(count:int, # Number of flower heads in the picture
                 size:int=128, # Output width and height in pixels
                 seed:int=0, # Random seed: the same seed gives the same picture
                ) -> Image.Image:
    "A photo-like RGB image of a field holding exactly `count` recognisable flower heads"
    rng = np.random.default_rng(seed)
    sz = size*_SS
    img,d = _background(rng, sz)
    heads = _place(rng, count, sz, sz*rng.uniform(.035,.06), sz*rng.uniform(.08,.12)) if count else []
    kinds = rng.choice(_TYPES, size=rng.integers(1,3)) # one or two species per field
    leaves = [(rng.uniform(0,sz), rng.uniform(0,sz), sz*rng.uniform(.08,.2), rng.uniform(0, 2*math.pi))
              for _ in range(int(rng.integers(3, 12)))]
    for lf in leaves[:len(leaves)//2]: d.polygon(_leaf(rng, *lf), fill=_jitter(rng, (50,110,35), 25))
    for (x,y),r in heads:
        a = rng.uniform(0.3, math.pi-0.3)
        d.line([(x,y), (x+math.cos(a)*r*4, y+math.sin(a)*r*4)], fill=_jitter(rng, (60,115,40), 20), width=max(2,int(r/5)))
    mask = Image.new('L' if count<255 else 'I', (size,size), 0) # at output size: it only needs to be roughly right
    md = ImageDraw.Draw(mask)
    for i,((x,y),r) in enumerate(heads):
        polys,cols,(box,ccol) = _head_polys(rng, kinds[rng.integers(len(kinds))], x, y, r)
        for p,c in zip(polys,cols):
            d.polygon(p, fill=c, outline=tuple(int(v*.8) for v in c))
        d.ellipse(box, fill=ccol)
        x,y,r = x/_SS,y/_SS,r*.8/_SS
        md.ellipse((x-r, y-r, x+r, y+r), fill=i+1) # the head's core, for the visibility check
    # occluding leaves in front, each kept only while every head it covers stays at least half visible
    full = np.bincount(np.asarray(mask).ravel(), minlength=count+1)
    for lf in leaves[len(leaves)//2:]:
        poly = _leaf(rng, *lf)
        trial = mask.copy()
        ImageDraw.Draw(trial).polygon([v/_SS for v in poly], fill=0)
        if count and (np.bincount(np.asarray(trial).ravel(), minlength=count+1)[1:] < .55*full[1:]).any(): continue
        mask = trial
        d.polygon(poly, fill=_jitter(rng, (55,120,40), 25))
    arr = np.asarray(img.reduce(_SS), np.float32)*_light(rng, size)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(rng.uniform(0.2, 0.7)))

def _jpeg(img, quality):
    "JPEG bytes of `img` at `quality`"
    buf = BytesIO()
    img.save(buf, 'JPEG', quality=int(quality))
    return buf.getvalue()

def make_flowers(out, # Folder to write `images/` and `counts.csv` into
                 n:int=1000, # Number of images
                 size:int=128, # Image width and height in pixels
                 max_count:int=20, # Counts are drawn uniformly from 0..max_count
                 seed:int=0, # Random seed: the same seed writes byte-identical files
                 show_progress:bool=True, # Show a progress bar
                ) -> Path:
    "Write a synthetic flower-count data set to `out`; returns the path of its CSV"
    out = Path(out)
    (out/'images').mkdir(parents=True, exist_ok=True)
    counts = np.random.default_rng(seed).integers(0, max_count+1, n)
    rows = []
    for i in progress(range(n), show=show_progress):
        rng = np.random.default_rng([seed, i])
        img = flower_field(int(counts[i]), size, seed=rng.integers(2**63))
        fn = f'{i:05d}.jpg'
        (out/'images'/fn).write_bytes(_jpeg(img, rng.integers(60, 96)))
        rows.append((fn, int(counts[i])))
    csv = out/'counts.csv'
    pd.DataFrame(rows, columns=['image','count']).to_csv(csv, index=False)
    return csv

@call_parse
def main(out:str, # Folder to write `images/` and `counts.csv` into
         n:int=1000, # Number of images
         size:int=128, # Image width and height in pixels
         max_count:int=20, # Counts are drawn uniformly from 0..max_count
         seed:int=0, # Random seed: the same seed writes byte-identical files
        ):
    "Generate a synthetic flower-field counting data set"
    csv = make_flowers(out, n=n, size=size, max_count=max_count, seed=seed)
    print(f'Wrote {n} images and {csv}')
