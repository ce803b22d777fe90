"""Saying how sure: split-conformal count intervals, and a fingerprint of the training images that flags unusual ones."""
import math, numpy as np, torch
from fastai.vision.all import *
from .errors import FlowersError

__all__ = ['pixel_stats', 'texture_stats', 'fingerprint', 'Calibration', 'fingerprints', 'calibrate']

def _spread(pred):
    "How far off a count of `pred` is expected to be, up to a constant: counting errors grow like the square root of the count"
    return np.sqrt(np.clip(np.asarray(pred, np.float64), 0, None) + 1.)

def pixel_stats(x) -> Tensor:
    "Statistics of a batch of 0..1 images (bs, 3, h, w) that photos share and noise, blank or drawn pages don't: (bs, 17)"
    sat = x.max(1).values - x.min(1).values
    lum = x.mean(1, keepdim=True)
    grad = (lum[...,1:]-lum[...,:-1]).abs().mean((1,2,3)) + (lum[...,1:,:]-lum[...,:-1,:]).abs().mean((1,2,3))
    lap = (4*lum[...,1:-1,1:-1] - lum[...,:-2,1:-1] - lum[...,2:,1:-1] - lum[...,1:-1,:-2] - lum[...,1:-1,2:]).abs().mean((1,2,3))
    coarse = F.avg_pool2d(x, 4).std((2,3)) # what is left at a quarter of the size: pixel noise averages away, a scene does not
    xc = x - x.mean((2,3), keepdim=True)
    sd = xc.pow(2).mean((2,3)).sqrt() + 1e-3
    corr = torch.stack([(xc[:,i]*xc[:,j]).mean((1,2))/(sd[:,i]*sd[:,j]) for i,j in ((0,1),(0,2),(1,2))], 1)
    return torch.cat([(coarse+1e-3).log(), ((grad+1e-3).log() - (coarse.mean(1)+1e-3).log())[:,None], x.mean((2,3)), x.std((2,3)),
                      sat.mean((1,2))[:,None], sat.std((1,2))[:,None], (sat<.03).float().mean((1,2))[:,None], grad[:,None], lap[:,None], corr], 1)

def texture_stats(x) -> Tensor:
    "How neighbouring pixels of 0..1 images (bs, 3, h, w) agree, and their colours' fine detail: (bs, 3); pixel-wise noise has neither"
    lum = x.mean(1, keepdim=True)
    lum = lum - lum.mean((2,3), keepdim=True)
    var = lum.pow(2).mean((1,2,3)) + 1e-9
    # 1 - autocorrelation at one pixel, on a log scale: scenes sit near 0, independent pixels near 1
    ac = [((1 - (a*b).mean((1,2,3))/var).clamp_min(0) + 1e-3).log() for a,b in ((lum[...,1:], lum[...,:-1]), (lum[...,1:,:], lum[...,:-1,:]))]
    r = x - F.avg_pool2d(F.pad(x, (1,1,1,1), mode='replicate'), 3, 1) # the fine detail of each channel
    r = r - r.mean((2,3), keepdim=True)
    sd = r.pow(2).mean((2,3)).sqrt() + 1e-6
    rc = torch.stack([(r[:,i]*r[:,j]).mean((1,2))/(sd[:,i]*sd[:,j]) for i,j in ((0,1),(0,2),(1,2))], 1).mean(1)
    return torch.stack([*ac, rc], 1)

def _means_sds(x) -> Tensor:
    "Each channel's mean and spread over (bs, c, h, w): (bs, 2c); the spread is NaN for a single cell, without torch's warning"
    x = x.float()
    m = x.mean((2,3))
    n = x.shape[2]*x.shape[3]
    return torch.cat([m, ((x - m[...,None,None]).pow(2).sum((2,3))/(n-1)).sqrt()], 1)

def fingerprint(model, # fastai's (body, head) network
                x01, # Images scaled to 0..1, (bs, 3, h, w)
                x, # The same images as the network takes them (normalised)
                dtype=None, # Autocast the body to this type
                features=True, # False: the counts alone (None for the features), skipping the statistics (about 10% of the time)
                cells=False, # The count map's cells, (bs, h, w), in place of the counts (a count-map head only)
               ) -> tuple:
    "Counts, and features that say what the images look like: pixel statistics, every residual stage's channel means and spreads, and texture"
    fs = [pixel_stats(x01.float())] if features else []
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        for i,m in enumerate(model[0]):
            x = m(x)
            if features and i>=4: fs.append(_means_sds(x)) # torchvision's stages follow the stem's 4 layers
    # the small head in fp32: on our validation set this keeps bf16 within 0.03 heads of fp32 (0.12 with it in bf16)
    head = model[1]
    if hasattr(head, 'density'): # a count map's hidden layer is what the counting sees: a block of its own (it flags noise)
        h = head.density[0](x.float())
        if features: fs.append(_means_sds(h))
        counts = head.density[1:](h)[:,0]
        if not cells: counts = counts.sum((1,2))
    else: counts = model[1:](x.float()).float().flatten()
    if not features: return counts,None,[]
    fs.append(texture_stats(x01.float())) # last: calibrations made before it ignore it
    return counts,torch.cat(fs, 1),[f.shape[1] for f in fs]

# Images wider (or taller) than every training image by more than this are flagged: on the default model, fields of 1.5:1 (its
# widest) counted with MAE 1.16 as square ones with 1.09, of 1.78:1 1.60, of 2:1 2.06, of 3:1 3.05, all undercounted
ASPECT_MARGIN = 1.25
# An image unlike the training images and this many times their side is pointed to counting by windows at their scale
SCALE_MARGIN = 2

class Calibration:
    "A model's conformal scores on held-out images, and a fingerprint of its training images: block by block, a mean and a precision"
    def __init__(self, scores, # |true - predicted| / spread on held-out images, sorted
                 means, # Per block of features: the training images' mean
                 precisions, # Per block: the inverse of their (shrunk) covariance
                 threshold, # The score (largest scaled distance over the blocks) above which an image is unusual
                 max_count, # Largest training count
                 level=0.9, # Default interval level
                 centre=None, # Per block: the median distance of held-out images (default 0)
                 scale=None, # Per block: its 99th percentile minus the median (default 1)
                 legacy=False, # Calibrated before the blocks: one block, the last stage's channel means
                 aspect=None, # (narrowest, widest) width/height of the training images as shown; None: not recorded then
                 side=None, # Pixels of a training image per model input side, their median (the square root of width x height when squished, the longer side when padded): `tile='auto'`; None: not recorded then
                ):
        self.scores = np.sort(np.asarray(scores, np.float64))
        self.means,self.precisions = [np.asarray(m, np.float32) for m in means],[np.asarray(p, np.float32) for p in precisions]
        self.centre = np.zeros(len(self.means)) if centre is None else np.asarray(centre, np.float64)
        self.scale = np.ones(len(self.means)) if scale is None else np.asarray(scale, np.float64)
        self.threshold,self.max_count,self.level,self.legacy = float(threshold),float(max_count),float(level),legacy
        self.aspect = None if aspect is None else tuple(map(float, aspect))
        self.side = None if side is None else float(side)

    def quantile(self, level=None) -> float:
        "The conformal score quantile for `level`: the ceil((n+1) level)-th smallest held-out score"
        level = self.level if level is None else level
        if not (isinstance(level, (int,float)) and 0 < level < 1): raise FlowersError(f"--interval {level!r}: the level must be between 0 and 1, e.g. 0.9")
        k = math.ceil((len(self.scores)+1)*level)
        return float(self.scores[k-1]) if k <= len(self.scores) else math.inf # too few held-out images for this level

    def interval(self, pred, level=None) -> tuple:
        "Arrays `(low, high)` around counts `pred` that hold the true count with probability `level` (for images like the held-out ones)"
        pred = np.asarray(pred, np.float64)
        half = self.quantile(level)*_spread(pred)
        return np.clip(pred-half, 0, None),pred+half

    def _blocks(self, feats):
        feats = np.asarray(feats, np.float32)
        if self.legacy: d = len(self.means[0]); return [feats[:, -2*d:-d]] # the last stage's means, the whole fingerprint then
        ends = np.cumsum([len(m) for m in self.means])
        return np.split(feats[:, :ends[-1]], ends[:-1], axis=1) # blocks added since (at the end) are not in older calibrations

    def block_distances(self, feats) -> np.ndarray:
        "Mahalanobis distance of `fingerprint` features (n x d) from the training images', per block, scaled: (n, blocks)"
        ds = []
        for f,m,p in zip(self._blocks(feats), self.means, self.precisions):
            z = f - m
            ds.append(np.sqrt(np.clip(np.einsum('nd,de,ne->n', z, p, z), 0, None)))
        return (np.stack(ds, 1) - self.centre)/self.scale

    def distance(self, feats) -> np.ndarray:
        "How unlike the training images: the largest scaled distance over the fingerprint's blocks (NaN where one can't be measured)"
        d = self.block_distances(feats)
        return np.where(np.isnan(d).any(1), np.nan, np.nan_to_num(d).max(1))

    def odd_shape(self, sizes) -> list:
        "For each (width, height) in `sizes`: a note if it is far wider or taller than every training image, else ''"
        aspect = getattr(self, 'aspect', None) # calibrations pickled before it was recorded have none
        if aspect is None: return ['']*len(sizes)
        lo,hi = aspect
        def note(w, h):
            r = w/h
            if lo/ASPECT_MARGIN <= r <= hi*ASPECT_MARGIN: return ''
            shape,most,heads = (f'{r:.1f}:1', f'{hi:.1f}:1', 'narrower or smaller') if r > 1 else (f'1:{1/r:.1f}', f'1:{1/lo:.1f}', 'flatter or smaller')
            return f'{shape}, a shape no training image has (up to {most}): made square for the model, its heads are {heads} than any it learnt; the count may be off'
        return [note(w, h) for w,h in sizes]

    def larger(self, w, h) -> str:
        "For a `w` x `h` image far larger than the training images, a hint to count it by windows at their scale; else ''"
        side = getattr(self, 'side', None) # calibrations pickled before it was recorded have none
        if side is None or (w*h)**.5 < SCALE_MARGIN*side: return ''
        # a photo of a whole bed, squeezed into one input, shows heads far smaller than any it learnt: --tile auto counts it at their scale
        return (f" ({w}x{h} px, {(w*h)**.5/side:.0f}x the training images' side: where its heads look as large as in them, "
                f"count it by windows at their scale: flowers.predict --tile auto, tile='auto', or the page's 'Count by windows')")

    def unusual(self, feats, pred, sizes=None) -> tuple:
        "Flags, and a short note for each flagged image: unlike the training images (with `sizes`, what to try if far larger), more heads than any of them, or (with `sizes`) a far odder shape"
        far,high = self.distance(feats) > self.threshold,np.asarray(pred) > self.max_count
        shape = self.odd_shape(sizes) if sizes is not None else ['']*len(far)
        larger = [self.larger(*wh) for wh in sizes] if sizes is not None else ['']*len(far)
        notes = ['; '.join([f'unlike the training images; the count may be meaningless{l}']*int(f) + [f'more than the largest training count ({self.max_count:g})']*int(h) + [o]*bool(o))
                 for f,h,o,l in zip(far, high, shape, larger)]
        return far|high|np.array([bool(o) for o in shape], bool),notes

    def unusual_windows(self, feats, pred) -> tuple:
        "A flag and a note for one image counted window by window, from its windows' `feats` and counts `pred`"
        # each window is counted as a training image is, so each is compared with them: a mosaic of fields squeezed into one
        # input looks like no training image, and a total is meant to pass the training counts
        # a window of a few pixels (an image's edge, or a tile far larger than the image) has a stage of one cell, whose spread is NaN:
        # it is judged by the others, and an image with none measurable is unusual (a 20 px photo with --tile 100000 counted 0, unflagged)
        d = self.distance(feats)
        d = d[np.isfinite(d)]
        tiny,far,high = not len(d),bool(len(d) and np.median(d) > self.threshold),bool((np.asarray(pred) > self.max_count).any())
        return tiny or far or high,'; '.join(['its windows hold too few pixels to count (is --tile larger than the image?); the count may be meaningless']*int(tiny) +
                                             ['most of its windows are unlike the training images; the count may be meaningless']*int(far) +
                                             [f'a window holds more heads for its area than the largest training count ({self.max_count:g})']*int(high))

    def to_meta(self) -> tuple:
        "What `model.json` records, and the tensors that go into `model.safetensors`"
        meta = dict(conformal=dict(scores=[round(float(s), 6) for s in self.scores], spread='sqrt(count+1)', level=self.level),
                    unusual=dict(threshold=self.threshold, max_count=self.max_count, centre=self.centre.tolist(), scale=self.scale.tolist(),
                                 **{k: list(v) if isinstance(v, tuple) else v for k in ('aspect', 'side') if (v := getattr(self, k, None)) is not None}))
        tensors = {f'calibration.{k}.{i}': torch.from_numpy(v) for k,vs in (('mean', self.means), ('precision', self.precisions)) for i,v in enumerate(vs)}
        return meta,tensors

    @classmethod
    def from_meta(cls, meta, tensors):
        "The `Calibration` saved by `to_meta` (or by the one-block version before it), or None for a model trained before calibration; ValueError for fields no export writes"
        if 'conformal' not in meta: return None
        c,u = meta['conformal'],meta['unusual']
        scores,level = _vector(c['scores'], 'conformal.scores'),_number(c.get('level', 0.9), 'conformal.level', 0, 1)
        threshold,max_count = _number(u['threshold'], 'unusual.threshold'),_number(u['max_count'], 'unusual.max_count')
        if 'calibration.mean' in tensors: # one block: the last stage's channel means
            return cls(scores, *_blocks_of(tensors, ['']), threshold, max_count, level, legacy=True)
        n = sum(k.startswith('calibration.mean.') for k in tensors) # a block each
        centre,aspect,side = _vector(u['centre'], 'unusual.centre', n),u.get('aspect'),u.get('side')
        if aspect is not None and not (0 < (aspect := _vector(aspect, 'unusual.aspect', 2))[0] <= aspect[1] < math.inf): raise ValueError('unusual.aspect must be [narrowest, widest] above 0')
        return cls(scores, *_blocks_of(tensors, [f'.{i}' for i in range(n)]), threshold, max_count, level, centre,
                   _vector(u['scale'], 'unusual.scale', n), aspect=aspect, side=None if side is None else _number(side, 'unusual.side', 0))

def _number(v, what, above=None, below=math.inf) -> float:
    "`v` if it is a number (and with `above`, finite and between `above` and `below`), else ValueError naming `what`"
    # an export may hold NaN where its held-out images had a stage it could not measure: it flags nothing, and must still load
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (above is not None and not above < v < below):
        raise ValueError(f"{what} is {str(v)[:80]}, not a number" + (f" in ({above}, {below})" if above is not None else ''))
    return float(v)

def _vector(v, what, n=None) -> np.ndarray:
    "`v` as a list of numbers (`n` of them), else ValueError naming `what`"
    try: a = np.asarray(v, np.float64)
    except (TypeError, ValueError): a = None
    if a is None or a.ndim!=1 or (n is not None and len(a)!=n): raise ValueError(f"{what} is {str(v)[:80]}, not a list of {n or 'some'} numbers")
    return a

def _blocks_of(tensors, ends) -> tuple:
    "The means and precisions `calibration.mean{end}`, `calibration.precision{end}` among `tensors`, each mean d numbers and each precision d x d"
    means,precs = [tensors[f'calibration.mean{e}'].numpy() for e in ends],[tensors[f'calibration.precision{e}'].numpy() for e in ends]
    if any(m.ndim!=1 or p.shape!=(len(m), len(m)) for m,p in zip(means, precs)): raise ValueError('calibration means and precisions of unlike sizes')
    return means,precs

def fingerprints(model, dl,
                 dtype=None, # Autocast the body to this type, as `Counter` does in its precision
                ) -> tuple:
    "`fingerprint` features and counts of every item of `dl`, in order, in eval mode; and the blocks' sizes"
    norm = first(dl.after_batch.fs.filter(risinstance(Normalize)))
    fs,ps = [],[]
    model.eval()
    # oneDNN's bf16 convolutions are fastest in NHWC; export and safetensors then want the usual layout back
    fmt = torch.channels_last if dtype is not None else torch.contiguous_format
    with torch.inference_mode():
        model.to(memory_format=fmt)
        try:
            for b in dl:
                x = b[0].contiguous(memory_format=fmt)
                p,f,sizes = fingerprint(model, norm.decode(x).as_subclass(Tensor) if norm is not None else x, x, dtype=dtype)
                fs.append(f.float().cpu()); ps.append(p.float().cpu())
        finally: model.to(memory_format=torch.contiguous_format)
    return torch.cat(fs).numpy(),torch.cat(ps).numpy(),sizes

def _fit_block(f, shrink):
    "Mean and shrunk-covariance precision of features `f` (n x d)"
    mean = f.mean(0)
    # one training image has no spread to measure: all its weight is then on the small ridge below, so far is far in every direction
    cov = np.cov(f - mean, rowvar=False).reshape(f.shape[1], f.shape[1]) if len(f)>1 else np.zeros((f.shape[1], f.shape[1]))
    cov = (1-shrink)*cov + shrink*np.trace(cov)/len(cov)*np.eye(len(cov)) + 1e-6*np.eye(len(cov))
    return mean,np.linalg.inv(cov)

def calibrate(learn, # A trained count `Learner`
              level=0.9, # Default interval level
              flag_pct=0.01, # Share of held-out images that the fingerprint's threshold flags
              shrink=0.1, # Covariance shrinkage towards its mean variance: hundreds of features from a few thousand images need it
              precision='fp32', # 'bf16': the network's features in bf16, as `Counter` counts on a CPU with native bf16 (2.5x faster here)
              counts=None, # The validation images' counts the intervals are fitted to, in order (default: this pass's, in `precision`)
             ) -> Calibration:
    "Fit conformal intervals on the validation set and a fingerprint of the training images (without augmentation)"
    # as validation and prediction see them: a dataloader of the training set (`dls.valid.new(train_ds)`) would augment them,
    # since fastai's batch transforms take their split from the data set, and augmented images make odd ones look usual
    tr = learn.dls.test_dl(learn.dls.train_ds.items, num_workers=0)
    dtype = torch.bfloat16 if precision=='bf16' else None
    f_tr,_,sizes = fingerprints(learn.model, tr, dtype)
    f_va,p_va,_ = fingerprints(learn.model, learn.dls.valid, dtype)
    if counts is not None: p_va = np.asarray(counts, np.float32)
    y_va = np.asarray([float(y) for y in learn.dls.valid_ds.tls[1]], np.float64)
    fits = [_fit_block(f, shrink) for f in np.split(f_tr, np.cumsum(sizes)[:-1], axis=1)]
    cal = Calibration(np.abs(y_va - p_va)/_spread(p_va), [m for m,_ in fits], [p for _,p in fits], 0.,
                      max(float(y) for y in learn.dls.train_ds.tls[1]), level)
    d = cal.block_distances(f_va) # each block's distances put on one scale: the median held-out image at 0, its 99th percentile at 1
    cal.centre = np.median(d, 0)
    cal.scale = np.maximum(np.quantile(d, .99, axis=0) - cal.centre, 1e-6)
    cal.threshold = float(np.quantile(cal.distance(f_va), 1-flag_pct))
    from .safe import input_spec # which imports this module
    cal.aspect,cal.side = _shapes(learn.dls.train_ds, input_spec(learn)['method'])
    return cal

def _shapes(ds, method='squish') -> tuple:
    "(narrowest, widest) width/height of the images of `ds` as shown, and the median of their pixels per model input side, from their headers"
    from .images import image_size
    src = ds.tls[0].tfms.fs[0] # the `ColReader` giving each row's file
    wh = np.array([image_size(src(r)) for _,r in ds.items.iterrows()], np.float64) # rows as Series: a column may be named 'file name'
    ws = wh[:,0]/wh[:,1]
    # squished, each side is scaled on its own, the area by the square root of width x height; padded, both by the longer side
    side = wh.max(1) if method=='pad' else np.sqrt(wh.prod(1))
    return (float(ws.min()), float(ws.max())),float(np.median(side))
