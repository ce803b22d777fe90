"""Synthetic flower fields: many kinds of heads on many kinds of ground, with a known count and head positions."""
import colorsys, json, math, multiprocessing, os, signal, sys, numpy as np, pandas as pd
from functools import partial
from io import BytesIO
from pathlib import Path
from PIL import Image, ImageDraw, ImageFilter
from fastcore.parallel import parallel
from fastcore.script import call_parse
from .heads import HEADS, head_colours, head_parts, draw_parts, petal_outline, circle
from .backgrounds import BACKGROUNDS, value_noise, leaf_colour, jitters, leaf_poly
from .progress import interactive
from .errors import FlowersError, check_int, check_seed, user_errors, term_interrupts
from .settings import MIN_TRAIN_SIZE

__all__ = ['SYNTH_VERSION', 'STAMP', 'HEADS', 'BACKGROUNDS', 'LAYOUTS', 'check_families', 'render_field', 'flower_field',
           'make_flowers', 'read_stamp', 'is_current']

MAX_FIELD = 4096 # pixels a side of a field's typical size, at most
SYNTH_VERSION = 3 # bump whenever the same seed would draw different images: older data sets are then regenerated
STAMP = 'synth.json'
_SS = 2 # supersampling: heads are drawn at 2x, then downsampled, for anti-aliased edges
# 'flat': a field seen from above, heads of one size; 'depth': seen at an angle, heads shrinking and foreshortened towards the top.
# Only 'flat' unless asked: 'depth' in training counted fields at an angle better, and empty ground more, on all 3 held-out pairs (README)
LAYOUTS = ('flat', 'depth')
DEPTH_P = .3 # share of fields seen at an angle when both layouts are drawn

def check_families(names, known, what) -> list:
    "`names` (a list, a comma-separated string, or None for all) checked against `known`"
    if names is None: return list(known)
    if isinstance(names, str): names = [o.strip() for o in names.split(',') if o.strip()]
    bad = [o for o in names if o not in known]
    if bad or not names: raise FlowersError(f"unknown {what} {', '.join(map(repr, bad)) or '(none given)'}; choose from {', '.join(known)}")
    return list(names)

def _place(rng, n, w, h, r0):
    "Centres and radii of `n` heads around radius `r0`, apart enough that each stays mostly visible"
    while True:
        rs = r0*rng.uniform(.8, 1.25, n)
        xy = np.zeros((n,2))
        for i,r in enumerate(rs):
            cand = rng.uniform(r*.6, (w-r*.6, h-r*.6), (40,2)) # mostly inside the frame
            ok = (np.hypot(*(cand[:,None]-xy[None,:i]).transpose(2,0,1)) > .8*(r+rs[:i])).all(1)
            if not ok.any(): break
            xy[i] = cand[ok.argmax()]
        else: return xy,rs
        r0 *= .9

def _light(rng, w, h, cells=8):
    "A smooth multiplicative lighting field: a gradient, soft blotches, and sometimes a cast shadow"
    yy,xx = np.mgrid[0:cells,0:cells]/cells
    a = rng.uniform(0, 2*math.pi)
    f = rng.uniform(.8, 1.2) + (xx*math.cos(a) + yy*math.sin(a))*rng.uniform(-.4, .4) + (rng.random((cells,cells)) - .5)*rng.uniform(0, .4)
    f = np.asarray(Image.fromarray(f.astype(np.float32), 'F').resize((w,h), Image.BICUBIC))
    if rng.random() < .4: # a shadow of something out of frame, with a soft edge
        sh = np.clip((value_noise(rng, w, h, 3) - .5)*8, 0, 1)
        f = f*(1 - sh*rng.uniform(.25, .45))
    return f[...,None]

def _clutter(rng, d, w, h, r0, col, ss):
    "What must not be counted: grass, leaves behind, stones, buds and fallen petals"
    n = int(rng.integers(0, 120))
    xy,ang = rng.random((n,2))*(w,h)*ss,rng.uniform(-.5, .5, n) - math.pi/2
    ln = rng.uniform(.03, .1, n)*min(w,h)*ss
    ends = np.concatenate([xy, xy + ln[:,None]*np.stack([np.cos(ang), np.sin(ang)], 1)], 1).tolist()
    for e,c in zip(ends, jitters(rng, leaf_colour(rng), n, 35)): d.line(e, fill=c, width=max(1, int(min(w,h)*ss/150)))
    for _ in range(int(rng.integers(0, 7))):
        d.polygon(leaf_poly(rng, rng.uniform(0, w*ss), rng.uniform(0, h*ss), r0*ss*rng.uniform(1.5, 4), rng.uniform(0, 2*math.pi)),
                  fill=tuple(int(v) for v in leaf_colour(rng)))
    for _ in range(int(rng.integers(0, 6))): # stones: head-sized but dull, speckled and irregular, as real ones are
        x,y = rng.uniform(0, w*ss), rng.uniform(0, h*ss)
        c = _stone_colour(rng)
        pts = circle(9)*r0*ss*rng.uniform(.4, 1.1, (9,1))*(1, rng.uniform(.5, .9)) @ _rot2(rng.uniform(0, math.pi))
        d.polygon((pts + (x,y)).ravel().tolist(), fill=c, outline=tuple(int(v*.6) for v in c))
        for sx,sy in rng.normal(0, .3*r0*ss, (4,2)): d.point((x+sx, y+sy), fill=tuple(int(v*.75) for v in c))
    petal = petal_outline('ellipse')
    for _ in range(int(rng.integers(0, 10))): # green buds with a tip of the heads' colour, and single fallen petals
        x,y,t = rng.uniform(0, w*ss), rng.uniform(0, h*ss), rng.uniform(0, 2*math.pi)
        s = r0*ss*rng.uniform(.35, .6)
        m = _rot2(t)*s
        if rng.random()<.5:
            d.polygon((petal*(1, .5)@m + (x,y)).ravel().tolist(), fill=tuple(int(v) for v in leaf_colour(rng)))
            d.polygon((petal*(.35, .25)@m + (x,y)).ravel().tolist(), fill=tuple(int(v*rng.uniform(.7, 1)) for v in col))
        else: d.polygon((petal*(1, .3)@m + (x,y)).ravel().tolist(), fill=tuple(int(v*rng.uniform(.7, 1)) for v in col))

def _depth(seed, layouts) -> tuple:
    "Size and height kept by the farthest heads (the top edge) of a field seen at an angle, or None for one seen from above"
    rng = np.random.default_rng([seed, 1]) # a stream of its own: fields seen from above are drawn as before layouts were
    if 'depth' not in layouts or ('flat' in layouts and rng.random() >= DEPTH_P): return None
    return rng.uniform(.35, .7),rng.uniform(.45, .85)

def _rot2(t): return np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])

def _stone_colour(rng):
    "Grey to brownish grey, never as bright or saturated as a head"
    v = rng.uniform(.3, .65)
    return tuple(int(c*255) for c in colorsys.hsv_to_rgb(rng.uniform(.05, .12), rng.uniform(0, .2), v))

def render_field(count:int, # Number of flower heads in the picture
                 size=128, # Width and height in pixels, or a (width, height) pair
                 seed:int=0, # Random seed: the same seed gives the same picture
                 heads=None, # Head families to draw from (default: all of `HEADS`)
                 backgrounds=None, # Background families to draw from (default: all of `BACKGROUNDS`)
                 layouts='flat', # Layouts to draw from (a list, comma-separated, or None for all of `LAYOUTS`)
                ) -> tuple:
    "A field of exactly `count` heads: the RGB image, head (x, y, r) in its pixels, and its families"
    heads,backgrounds = check_families(heads, HEADS, 'head family'),check_families(backgrounds, BACKGROUNDS, 'background family')
    depth = _depth(seed, check_families(layouts, LAYOUTS, 'layout'))
    rng = np.random.default_rng(seed)
    w,h = (size,size) if isinstance(size, int) else size
    bg = backgrounds[rng.integers(len(backgrounds))]
    arr = np.clip(BACKGROUNDS[bg](rng, w, h), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr).resize((w*_SS, h*_SS), Image.NEAREST)
    d = ImageDraw.Draw(img)
    r0 = min(w,h)*math.exp(rng.uniform(math.log(.055), math.log(.19))) # with each head's 0.8..1.25: a 5.4x range
    kinds = list(rng.choice(heads, size=min(len(heads), rng.integers(1, 3)), replace=False)) # one or two species per field
    cols = [head_colours(rng) for _ in kinds]
    _clutter(rng, d, w, h, r0, cols[0][0], _SS)
    xy,rs = _place(rng, count, w, h, r0) if count else (np.zeros((0,2)), np.zeros(0))
    xy,rs = xy*_SS,rs*_SS
    near = xy[:,1]/(h*_SS) if depth else 0 # 0 at the top edge (far), 1 at the bottom (near)
    shrink,squash = (depth[0] + (1-depth[0])*near, depth[1] + (1-depth[1])*near) if depth else (1,np.ones(count))
    rs = rs*shrink
    if rng.random() < .7: # stems
        for (x,y),r,c in zip(xy, rs, jitters(rng, leaf_colour(rng), count, 20)):
            a = rng.uniform(.3, math.pi-.3)
            d.line([(x,y), (x+math.cos(a)*r*4, y+math.sin(a)*r*4)], fill=c, width=max(2, int(r/5)))
    mask = Image.new('L' if count<255 else 'I', (w,h), 0) # at output size: it only needs to be roughly right
    md = ImageDraw.Draw(mask)
    fam = []
    for i,((x,y),r) in enumerate(zip(xy, rs)):
        k = int(rng.integers(len(kinds)))
        fam.append(kinds[k])
        draw_parts(d, head_parts(rng, kinds[k], x, y, r, *cols[k], squash=squash[i]))
        x,y,rc = x/_SS,y/_SS,r*.7/_SS
        md.ellipse((x-rc, y-rc*squash[i], x+rc, y+rc*squash[i]), fill=i+1) # the head's core, for the visibility check
    # occluding leaves in front, each kept only while every head it covers stays at least half visible
    full = np.bincount(np.asarray(mask).ravel(), minlength=count+1)
    for _ in range(int(rng.integers(0, 7))):
        poly = leaf_poly(rng, rng.uniform(0, w*_SS), rng.uniform(0, h*_SS), r0*_SS*rng.uniform(1.5, 4), rng.uniform(0, 2*math.pi))
        trial = mask.copy()
        ImageDraw.Draw(trial).polygon([v/_SS for v in poly], fill=0)
        if count and (np.bincount(np.asarray(trial).ravel(), minlength=count+1)[1:] < .55*full[1:]).any(): continue
        mask = trial
        d.polygon(poly, fill=tuple(int(v) for v in leaf_colour(rng)))
    img = img.reduce(_SS)
    if rng.random() < .5: img = img.filter(ImageFilter.GaussianBlur(rng.uniform(.3, 1.3)*min(w,h)/128)) # defocus
    cast = rng.uniform(.8, 1.2, 3) if rng.random()<.7 else np.ones(3)
    arr = np.asarray(img, np.float32)*_light(rng, w, h)*cast.astype(np.float32)
    arr += rng.standard_normal(arr.shape, np.float32)*rng.uniform(0, 8) # sensor noise
    pts = np.concatenate([xy/_SS, rs[:,None]/_SS], 1) if count else np.zeros((0,3))
    info = dict(background=bg, heads='+'.join(sorted(set(fam))), layout='depth' if depth else 'flat')
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), pts, info

def flower_field(count:int, # Number of flower heads in the picture
                 size=128, # Width and height in pixels, or a (width, height) pair
                 seed:int=0, # Random seed: the same seed gives the same picture
                 **kwargs, # `heads`, `backgrounds` and `layouts` families, passed to `render_field`
                ) -> Image.Image:
    "A photo-like RGB image of a field holding exactly `count` recognisable flower heads"
    return render_field(count, size, seed, **kwargs)[0]

def _jpeg(img, quality):
    "JPEG bytes of `img` at `quality`"
    buf = BytesIO()
    img.save(buf, 'JPEG', quality=int(quality))
    return buf.getvalue()

def _shape(rng, size, vary):
    "Width and height of one image: `size` squared, or around it with aspect ratios from 2:3 to 3:2"
    if not vary: return size,size
    a,s = math.exp(rng.uniform(math.log(2/3), math.log(3/2))),rng.uniform(.8, 1.25)
    return max(16, round(size*s*math.sqrt(a))),max(16, round(size*s/math.sqrt(a)))

def _write_one(item, out, seed, size, vary, heads, backgrounds, layouts, pooled=False):
    "Render and write image `i` holding `count` heads, `item` being `(i, count)`; returns its counts row and its points"
    # Ctrl-C reaches a terminal's whole process group: the main process alone stops the pool, which hung once when its workers stopped too
    if pooled: signal.signal(signal.SIGINT, signal.SIG_IGN)
    i,count = item
    rng = np.random.default_rng([seed, i])
    img,pts,info = render_field(int(count), _shape(rng, size, vary), int(rng.integers(2**63)), heads=heads, backgrounds=backgrounds,
                                layouts=layouts)
    fn = f'{i:05d}.jpg'
    (out/'images'/fn).write_bytes(_jpeg(img, rng.integers(40, 96)))
    return dict(image=fn, count=int(count), **info), [(fn, *p) for p in np.round(pts, 2).tolist()]

def read_stamp(path) -> dict:
    "How the synthetic data set in `path` was made (`synth.json`), or {}"
    try: return json.loads((Path(path)/STAMP).read_text())
    except (OSError, ValueError): return {}

def is_current(path, # Folder of a synthetic data set
               **settings, # `make_flowers` arguments it must have been drawn with, e.g. n=400, seed=1
              ) -> bool:
    "Was the set in `path` drawn by this generator version with `settings`? Older sets must be drawn again, never reused"
    stamp = read_stamp(path)
    return (Path(path)/'counts.csv').is_file() and stamp.get('version')==SYNTH_VERSION and all(stamp.get(k)==v for k,v in settings.items())

def make_flowers(out, # Folder to write `images/`, `counts.csv`, `points.csv` and `synth.json` into
                 n:int=1000, # Number of images
                 size:int=128, # Image size in pixels (the typical side, with `vary_size`)
                 max_count:int=20, # Counts are drawn uniformly from min_count..max_count
                 seed:int=0, # Random seed: the same seed writes byte-identical files
                 min_count:int=0, # Fewest heads in an image
                 heads=None, # Head families (default: all of `HEADS`); leave some out to test on them
                 backgrounds=None, # Background families (default: all of `BACKGROUNDS`)
                 layouts='flat', # Layouts (None for all of `LAYOUTS`): fields seen from above ('flat') or at an angle ('depth')
                 vary_size:bool=True, # Vary width and height (0.8..1.25 x `size`, aspect 2:3..3:2) instead of squares
                 show_progress:bool=True, # Show a progress bar
                 n_workers:int=None, # Processes drawing images (default: one per core, at most 4)
                 replace:bool=False, # Write over a `counts.csv` this generator did not write (else refused: it may be someone's own data set)
                ) -> Path:
    "Write a synthetic flower-count data set to `out`; returns the path of its CSV"
    heads,backgrounds = check_families(heads, HEADS, 'head family'),check_families(backgrounds, BACKGROUNDS, 'background family')
    layouts = check_families(layouts, LAYOUTS, 'layout')
    check_int('--n', n, 0), check_seed(seed)
    # `--size 99999` (a typo) asked numpy for 24 GB for one field, and died with its MemoryError's traceback
    check_int('--size', size, MIN_TRAIN_SIZE, f' (a ResNet sees nothing in smaller images, and a field of {MAX_FIELD} px takes about 1 GB to draw)', hi=MAX_FIELD)
    if not 0 <= min_count <= max_count: raise FlowersError(f"counts must satisfy 0 <= min_count <= max_count, not {min_count}..{max_count}")
    # placing n heads takes n^2 steps, and past this they shrink under 1.5 px: a typo's 100000 would draw for hours
    if max_count > (size//4)**2: raise FlowersError(f"--max-count {max_count}: at most {(size//4)**2} heads can be told apart in a {size} px image; use a larger --size")
    out = Path(out)
    if not replace and (out/'counts.csv').is_file() and not (out/STAMP).is_file(): # its images/00000.jpg.. too would be drawn over
        raise FlowersError(f"{out} holds a counts.csv that flowers.synth did not write (it has no {STAMP}); give an empty or new folder")
    ours = (out/STAMP).is_file() # a set this generator drew: its images are ours to remove
    (out/'images').mkdir(parents=True, exist_ok=True)
    counts = np.random.default_rng(seed).integers(min_count, max_count+1, n)
    n_workers = min(4, os.cpu_count() or 1) if n_workers is None else n_workers
    if multiprocessing.current_process().daemon or n<64: n_workers = 0 # a pool's worker may not start processes; a few images aren't worth one
    f = partial(_write_one, out=out, seed=seed, size=size, vary=vary_size, heads=heads, backgrounds=backgrounds, layouts=layouts, pooled=n_workers>0)
    with term_interrupts():
        res = parallel(f, list(enumerate(counts.tolist())), n_workers=n_workers, progress=show_progress and interactive(), chunksize=16, threadpool=False)
    # fastcore's process pool hands back nothing, not an exception, when its workers fail: never write a short data set
    if len(res)!=n: raise RuntimeError(f"drawing {n} images with {n_workers} processes returned {len(res)}; try n_workers=0")
    # a set of ours drawn again smaller: its images past the new n stayed, and a folder count (`predict out/images`) saw them
    for f in (out/'images').glob('*.jpg') if ours else ():
        if f.stem.isdigit() and int(f.stem) >= n: f.unlink()
    pd.DataFrame([r for r,_ in res]).to_csv(out/'counts.csv', index=False)
    pd.DataFrame([p for _,ps in res for p in ps], columns=['image','x','y','r']).to_csv(out/'points.csv', index=False)
    stamp = dict(version=SYNTH_VERSION, n=n, size=size, min_count=min_count, max_count=max_count, seed=seed, heads=heads,
                 backgrounds=backgrounds, layouts=layouts, vary_size=vary_size)
    (out/STAMP).write_text(json.dumps(stamp, indent=2))
    return out/'counts.csv'

if __name__=='__main__': sys.argv[0] = 'python -m flowers.synth' # the usage line argparse prints

@call_parse
def main(out:str, # Folder to write `images/`, `counts.csv`, `points.csv` and `synth.json` into
         n:int=1000, # Number of images
         size:int=128, # Typical image side in pixels
         max_count:int=20, # Counts are drawn uniformly from --min-count..max_count
         seed:int=0, # Random seed: the same seed writes byte-identical files
         min_count:int=0, # Fewest heads in an image
         heads:str=None, # Comma-separated head families (default: all)
         backgrounds:str=None, # Comma-separated background families (default: all)
         layouts:str='flat', # Comma-separated layouts: flat (seen from above), depth (seen at an angle)
         square:bool=False, # Square images of exactly --size, instead of varied sizes and aspect ratios
        ):
    "Generate a synthetic flower-field counting data set"
    with user_errors():
        try: csv = make_flowers(out, n=n, size=size, max_count=max_count, seed=seed, min_count=min_count, heads=heads, backgrounds=backgrounds,
                                layouts=layouts, vary_size=not square)
        except KeyboardInterrupt: print(f'Interrupted: {out} holds some images but no counts.csv yet', file=sys.stderr); sys.exit(130)
    print(f'Wrote {n} images, {csv} and {csv.with_name("points.csv")}')
