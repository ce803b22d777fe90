"""Flower-head families for the synthetic fields: each draws one head that counts as one, whatever its parts."""
import colorsys, math, numpy as np

__all__ = ['HEADS', 'head_colours', 'head_parts', 'draw_parts', 'circle', 'petal_outline']

def circle(n=16):
    "Unit circle as an (n,2) polygon"
    t = np.linspace(0, 2*math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)

_CIRCLE,_DOT = circle(18),circle(8)

def petal_outline(shape, n_pts=10):
    "Unit petal along +x from 0 to 1, as an (n,2) polygon"
    t = np.linspace(0, 2*math.pi, 2*n_pts, endpoint=False)
    x,y = (1-np.cos(t))/2, np.sin(t)/2
    if shape=='round':   y = y*(0.6+0.8*x)
    if shape=='pointed': y = y*np.sin(math.pi*x)**0.6*(1.2-x*.5)
    if shape=='notched': x = x - 0.12*np.exp(-((y/.5)**2)/0.08)*(x>0.5)
    return np.stack([x,y], 1)

_SHAPES = ('ellipse','round','pointed','notched')
_PETALS = {s:petal_outline(s) for s in _SHAPES}

def _rgb(h, s, v): return tuple(int(c*255) for c in colorsys.hsv_to_rgb(h%1, s, v))

def head_colours(rng) -> tuple:
    "Petal and centre colours of one species: any hue but foliage green, sometimes white; centres contrast"
    if rng.random() < .2: petal = _rgb(rng.random(), rng.uniform(0, .12), rng.uniform(.85, 1))
    else:
        h = rng.uniform(.42, 1.22) # skips .22..42, the greens of leaves and grass
        petal = _rgb(h, rng.uniform(.45, 1), rng.uniform(.65, 1)) # brighter and more saturated than stones and soil
    centre = [_rgb(rng.uniform(.1, .16), rng.uniform(.7, 1), rng.uniform(.8, 1)), # yellow
              _rgb(rng.uniform(.05, .1), rng.uniform(.5, .9), rng.uniform(.2, .45)), # brown
              _rgb(0, 0, rng.uniform(.9, 1)), # white
              _rgb(rng.random(), rng.uniform(.5, 1), rng.uniform(.3, .9))][rng.integers(4)]
    return petal, centre

def _shade(c, f): return (min(255, int(c[0]*f)), min(255, int(c[1]*f)), min(255, int(c[2]*f))) # f >= 0

def _ring(rng, petal, n, length, width, rot=0., start=0.):
    "`n` petals of unit outline `petal` radiating from the centre, `length` long"
    a = rot + 2*math.pi*np.arange(n)/n + rng.normal(0, .05, n)
    p = petal*np.array([length-start, width]) + (start, 0)
    c,s = np.cos(a)[:,None],np.sin(a)[:,None]
    return np.stack([p[:,0]*c - p[:,1]*s, p[:,0]*s + p[:,1]*c], -1) # (n, k, 2)

def _petal_head(rng, col, ccol, rings=1, n=None, shape=None, c=None):
    "Petals around a centre disc: daisies, cosmos, buttercups"
    n = n or int(rng.integers(5, 21))
    shape = shape or _SHAPES[rng.integers(len(_SHAPES))]
    width = min(.6, 2*math.pi/n*rng.uniform(.45, .75)) if shape=='ellipse' else rng.uniform(.25, .55)*min(1, 8/n)*1.4
    parts = []
    for k in range(rings):
        for p in _ring(rng, _PETALS[shape], n, 1-.15*k, width, rot=rng.uniform(0, 2*math.pi)):
            parts.append((p, _shade(col, rng.uniform(.85, 1.05)*(1-.12*k)), None))
    c = c or rng.uniform(.15, .35)
    parts.append((_CIRCLE*c, ccol, None))
    return parts

def _star(rng, col, ccol):
    "A filled star, with or without an edge"
    k = int(rng.integers(5, 9))
    t = np.arange(2*k)*math.pi/k
    rad = np.where(np.arange(2*k)%2==0, 1., rng.uniform(.35, .6))
    parts = [(np.stack([np.cos(t)*rad, np.sin(t)*rad], 1), col, _shade(col, .6) if rng.random()<.5 else None)]
    if rng.random() < .5: parts.append((_CIRCLE*rng.uniform(.12, .25), ccol, None))
    return parts

def _polygon(rng, col, ccol):
    "A regular polygon, with or without an edge, sometimes with a second one inside"
    k = int(rng.integers(5, 9))
    t = np.arange(k)*2*math.pi/k
    poly = np.stack([np.cos(t), np.sin(t)], 1)
    parts = [(poly*.9, col, _shade(col, .55) if rng.random()<.5 else None)]
    if rng.random() < .5: parts.append((poly*rng.uniform(.3, .55), ccol, None))
    return parts

def _disc(rng, col, ccol):
    "Discs without petals: one to three concentric rings"
    rings = int(rng.integers(1, 4))
    parts = [(_CIRCLE, col, _shade(col, .6) if rng.random()<.3 else None)]
    for k in range(1, rings): parts.append((_CIRCLE*(1-k*rng.uniform(.25, .35)), ccol if k%2 else col, None))
    return parts

def _phyllotaxis(m, spread):
    "`m` points spread evenly over a disc of radius `spread`, as sunflower seeds are"
    i = np.arange(m) + .5
    a = i*math.radians(137.5)
    return np.stack([np.cos(a), np.sin(a)], 1)*(np.sqrt(i/m)*spread)[:,None]

def _cluster(rng, col, ccol):
    "A tight cluster of small florets that together make one head"
    m = int(rng.integers(6, 14))
    fr = rng.uniform(.2, .3)
    parts = []
    for xy in _phyllotaxis(m, 1-fr):
        xy = xy + rng.normal(0, .03, 2)
        parts.append((_DOT*fr + xy, _shade(col, rng.uniform(.8, 1.05)), _shade(col, .7)))
        parts.append((_DOT*fr*.35 + xy, ccol, None))
    return parts

def _umbel(rng, col, ccol):
    "An umbel: small groups of tiny flowers on a flat dome (yarrow, Queen Anne's lace)"
    xy = np.concatenate([c + _phyllotaxis(int(rng.integers(5, 10)), .22) for c in _phyllotaxis(int(rng.integers(4, 9)), .72)])
    xy = xy + rng.normal(0, .02, xy.shape)
    return [(_DOT*.09 + o, _shade(col, f), None) for o,f in zip(xy, rng.uniform(.8, 1.05, len(xy)))]

def _spike(rng, col, ccol):
    "A cone-shaped spike of florets (lupin, lavender, grape hyacinth), twice as long as wide"
    rows = int(rng.integers(6, 10))
    parts = []
    for j in range(rows):
        y = 1 - 2*(j+.5)/rows
        w = .5*(1 - .6*(j/rows))*(1 - .5*(j==0)) # wide at the bottom, pointed at the tip
        for x in np.linspace(-w, w, 3 if w>.3 else 2):
            parts.append((_DOT*np.array([.2, .15])*rng.uniform(.9, 1.2) + (x, y), _shade(col, 1-.25*j/rows), _shade(col, .7)))
    return parts

def _rosette(rng, col, ccol):
    "A rose or dahlia: rings of round petals, darker and smaller towards the middle"
    n,parts = int(rng.integers(6, 11)),[]
    for k,ln in enumerate(np.linspace(1, .35, int(rng.integers(3, 5)))):
        for p in _ring(rng, _PETALS['round'], n, ln, .7, rot=k*math.pi/n): parts.append((p, _shade(col, 1-.15*k), _shade(col, .7-.1*k)))
    return parts

def _sunflower(rng, col, ccol):
    "Two rings of pointed petals around a large dark, seeded disc"
    parts = _petal_head(rng, col, _shade(ccol, .5), rings=2, n=int(rng.integers(14, 24)), shape='pointed', c=rng.uniform(.38, .5))
    c = parts[-1][0].max()
    parts += [(_DOT*.04 + xy, _shade(ccol, .8), None) for xy in _phyllotaxis(int(rng.integers(8, 20)), c*.85)]
    return parts

def _tilted(rng, col, ccol): return _petal_head(rng, col, ccol) # its tilt is applied by `head_parts`

HEADS = dict(petal=_petal_head, sunflower=_sunflower, star=_star, polygon=_polygon, disc=_disc, tilted=_tilted,
             cluster=_cluster, umbel=_umbel, spike=_spike, rosette=_rosette)

def _rot(t): return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])

def head_parts(rng, # Random generator
               kind, # A key of `HEADS`
               x, y, r, # Centre and radius in pixels
               col, ccol, # Petal and centre colours
               squash=1., # Height kept after all else: a head foreshortened in a field seen at an angle
              ) -> list:
    "Polygons (flat lists of pixel coordinates), fills and outlines of one head, rotated, tilted and placed"
    parts = HEADS[kind](rng, col, ccol)
    tilt = rng.uniform(.35, .7) if kind=='tilted' else rng.uniform(.85, 1)
    a,b = rng.uniform(0, 2*math.pi, 2)
    if kind=='spike': b = rng.uniform(-.4, .4) # spikes stand roughly upright
    m = (_rot(b) @ np.diag([1, tilt]) @ _rot(a) if kind!='spike' else _rot(b)).T*r @ np.diag([1, squash])
    flat = (np.concatenate([p for p,_,_ in parts]) @ m + (x, y)).ravel().tolist() # one transform for every part
    ends = np.cumsum([2*len(p) for p,_,_ in parts]).tolist()
    return [(flat[a:b], f, o) for a,b,(_,f,o) in zip([0]+ends, ends, parts)]

def draw_parts(d, parts):
    "Draw `head_parts` onto `ImageDraw` `d`"
    for p,f,o in parts: d.polygon(p, fill=f, outline=o)
