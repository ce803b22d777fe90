"""Background families for the synthetic fields: what lies behind the heads, with nothing in it to count."""
import colorsys, math, numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ['BACKGROUNDS', 'value_noise', 'earth_colour', 'leaf_colour', 'jitters', 'leaf_poly']

def value_noise(rng, w, h, cells) -> np.ndarray:
    "Smooth noise in [0,1] of shape (h,w), from a random grid `cells` across the longer side"
    cw,ch = max(2, int(cells*w/max(w,h))),max(2, int(cells*h/max(w,h)))
    g = Image.fromarray((rng.random((ch,cw))*255).astype(np.uint8))
    return np.asarray(g.resize((w,h), Image.BICUBIC), dtype=np.float32)/255

def _hsv(h, s, v): return np.array(colorsys.hsv_to_rgb(h%1, s, v), np.float32)*255

def earth_colour(rng): return _hsv(rng.uniform(.02, .12), rng.uniform(.2, .7), rng.uniform(.15, .6)) # soil, bark, mulch
def leaf_colour(rng):  return _hsv(rng.uniform(.18, .4), rng.uniform(.35, .9), rng.uniform(.2, .65)) # foliage, grass

def jitters(rng, col, n, amt=25):
    "`n` copies of colour `col`, each varied a little, as int tuples"
    v = rng.integers(-amt, amt+1, (n,3)) + np.asarray(col, int)
    return list(map(tuple, np.minimum(np.maximum(v, 0), 255).tolist())) # ufuncs: np.clip's overhead dominates here

def leaf_poly(rng, x, y, length, ang) -> list:
    "A leaf at (x,y), `length` long, pointing at `ang`, as a flat polygon list"
    t = np.linspace(0, 1, 10)
    w = length*rng.uniform(.18, .3)*np.sin(math.pi*t)
    pts = np.concatenate([np.stack([t*length, w],1), np.stack([t[::-1]*length, -w[::-1]],1)])
    c,s = math.cos(ang), math.sin(ang)
    return np.stack([x + pts[:,0]*c - pts[:,1]*s, y + pts[:,0]*s + pts[:,1]*c], 1).ravel().tolist()

def _noise(rng, w, h):
    "Soil and vegetation mixed by noise at a random scale and contrast"
    a,b = earth_colour(rng),leaf_colour(rng) if rng.random()<.7 else earth_colour(rng)
    mix = value_noise(rng, w, h, rng.integers(2, 8))*.7 + value_noise(rng, w, h, rng.integers(8, 24))*.3
    mix = np.clip((mix - .5)*rng.uniform(1, 5) + rng.uniform(.2, .8), 0, 1)[...,None]
    fine = (value_noise(rng, w, h, max(w,h)//rng.integers(2, 5)) - .5)[...,None]*rng.uniform(10, 70)
    return a + (b-a)*mix + fine

def _stones(rng, w, h, chips):
    "Many small stones (ellipses with a darker rim) or bark chips (thin rotated boxes) on soil"
    img = Image.fromarray(np.broadcast_to(earth_colour(rng)*.7, (h,w,3)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    s = min(w,h)*rng.uniform(.02, .06)
    n = int(w*h/s**2*rng.uniform(.6, 1.2))
    grey = rng.random()<.5
    base = _hsv(rng.uniform(.05, .12), rng.uniform(0, .12) if grey else rng.uniform(.15, .35), rng.uniform(.3, .6)) # duller than any head
    xy,sz,ang = rng.random((n,2))*(w,h),s*rng.uniform(.5, 1.5, (n,2)),rng.uniform(0, math.pi, n)
    for (x,y),(a,b),t,c in zip(xy, sz, ang, jitters(rng, base, n, 22)):
        if chips:
            ca,sa,b = math.cos(t),math.sin(t),a*.3
            d.polygon([(x+ca*u-sa*v, y+sa*u+ca*v) for u,v in ((-a,-b),(a,-b),(a,b),(-a,b))], fill=c)
        else: d.ellipse((x-a, y-b, x+a, y+b), fill=c, outline=tuple(int(v*.6) for v in c))
    return np.asarray(img, np.float32)

def _pebbles(rng, w, h):
    "Gravel or pebbles: many small rounded stones on soil"
    return _stones(rng, w, h, chips=False)

def _mulch(rng, w, h):
    "Bark mulch or wood chips: many thin chips on soil"
    return _stones(rng, w, h, chips=True)

def _litter(rng, w, h):
    "Leaf litter: dry leaves in browns and yellows, overlapping on soil"
    img = Image.fromarray(np.broadcast_to(earth_colour(rng)*.6, (h,w,3)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    base = _hsv(rng.uniform(.04, .14), rng.uniform(.3, .7), rng.uniform(.3, .6))
    for c in jitters(rng, base, int(rng.integers(40, 120)), 30):
        d.polygon(leaf_poly(rng, rng.uniform(0, w), rng.uniform(0, h), min(w,h)*rng.uniform(.06, .2), rng.uniform(0, 2*math.pi)),
                  fill=c, outline=tuple(int(v*.7) for v in c))
    return np.asarray(img, np.float32)

def _foliage(rng, w, h):
    "Out-of-focus leaves filling the frame"
    img = Image.fromarray(np.broadcast_to(leaf_colour(rng)*.6, (h,w,3)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    base = leaf_colour(rng)
    for c in jitters(rng, base, int(rng.integers(25, 70)), 45):
        d.polygon(leaf_poly(rng, rng.uniform(0, w), rng.uniform(0, h), min(w,h)*rng.uniform(.15, .45), rng.uniform(0, 2*math.pi)), fill=c)
    return np.asarray(img.filter(ImageFilter.GaussianBlur(rng.uniform(1, 4)*min(w,h)/128)), np.float32)

def _plain(rng, w, h):
    "One colour, or a linear gradient between two, as on a backdrop or a plain wall"
    cols = [_hsv(rng.random(), rng.uniform(0, .6), rng.uniform(.15, .8)) for _ in range(2)]
    if rng.random()<.3: cols[1] = cols[0]
    a = rng.uniform(0, 2*math.pi)
    yy,xx = np.mgrid[0:h,0:w]/max(w,h)
    t = np.clip((xx*math.cos(a) + yy*math.sin(a))*rng.uniform(.5, 1.5) + rng.uniform(-.3, .3), 0, 1)[...,None]
    return cols[0] + (cols[1]-cols[0])*t

def _grain(rng, w, h):
    "A dull surface under strong camera grain, as in a dim or high-ISO photo"
    base = (earth_colour(rng) if rng.random()<.5 else leaf_colour(rng)) + (value_noise(rng, w, h, 4)[...,None]-.5)*30
    sd = rng.uniform(10, 30)
    grain = rng.standard_normal((h,w,1 if rng.random()<.5 else 3), np.float32)*sd
    return base + grain

def _grass(rng, w, h):
    "Dense grass: blades of many greens over dark ground"
    img = Image.fromarray(np.broadcast_to(earth_colour(rng)*.6, (h,w,3)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    n = int(w*h/rng.uniform(25, 60))
    xy,ang,ln = rng.random((n,2))*(w,h),rng.uniform(-.6, .6, n) - math.pi/2,rng.uniform(.04, .14, n)*min(w,h)
    ends = np.concatenate([xy, xy + ln[:,None]*np.stack([np.cos(ang), np.sin(ang)], 1)], 1).tolist()
    for e,c in zip(ends, jitters(rng, leaf_colour(rng), n, 40)): d.line(e, fill=c, width=1)
    return np.asarray(img, np.float32)

BACKGROUNDS = dict(noise=_noise, pebbles=_pebbles, mulch=_mulch, litter=_litter, foliage=_foliage, plain=_plain, grain=_grain, grass=_grass)
