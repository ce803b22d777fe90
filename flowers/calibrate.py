"""Saying how sure: split-conformal count intervals, and a fingerprint of the training images that flags unusual ones."""
import math, numpy as np, torch
from fastai.vision.all import *
from .errors import FlowersError

__all__ = ['Calibration', 'body_features', 'calibrate']

def _spread(pred):
    "How far off a count of `pred` is expected to be, up to a constant: counting errors grow like the square root of the count"
    return np.sqrt(np.clip(np.asarray(pred, np.float64), 0, None) + 1.)

class Calibration:
    "A model's conformal scores on held-out images and its training images' feature fingerprint (`mean`, `precision`, `threshold`)"
    def __init__(self, scores, # |true - predicted| / spread on held-out images, sorted
                 mean, # Mean pooled body feature of the training images
                 precision, # Inverse of their (shrunk) covariance
                 threshold, # Mahalanobis distance above which an image is unusual
                 max_count, # Largest training count
                 level=0.9, # Default interval level
                ):
        self.scores = np.sort(np.asarray(scores, np.float64))
        self.mean,self.precision = np.asarray(mean, np.float32),np.asarray(precision, np.float32)
        self.threshold,self.max_count,self.level = float(threshold),float(max_count),float(level)

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

    def distance(self, feats) -> np.ndarray:
        "Mahalanobis distance of pooled body features `feats` (n x d) from the training images'"
        z = np.asarray(feats, np.float32) - self.mean
        return np.sqrt(np.clip(np.einsum('nd,de,ne->n', z, self.precision, z), 0, None))

    def unusual(self, feats, pred) -> tuple:
        "Flags, and a short note for each flagged image: unlike the training images, or more heads than any of them"
        far,high = self.distance(feats) > self.threshold,np.asarray(pred) > self.max_count
        notes = [('unlike the training images; the count may be meaningless' if f else '') +
                 ('; ' if f and h else '') + (f'more than the largest training count ({self.max_count:g})' if h else '') for f,h in zip(far, high)]
        return far|high,notes

    def to_meta(self) -> tuple:
        "What `model.json` records, and the tensors that go into `model.safetensors`"
        meta = dict(conformal=dict(scores=[round(float(s), 6) for s in self.scores], spread='sqrt(count+1)', level=self.level),
                    unusual=dict(threshold=self.threshold, max_count=self.max_count))
        return meta,{'calibration.mean': torch.from_numpy(self.mean), 'calibration.precision': torch.from_numpy(self.precision)}

    @classmethod
    def from_meta(cls, meta, tensors):
        "The `Calibration` saved by `to_meta`, or None for a model trained before calibration was recorded"
        if 'conformal' not in meta or 'calibration.mean' not in tensors: return None
        c,u = meta['conformal'],meta['unusual']
        return cls(c['scores'], tensors['calibration.mean'].numpy(), tensors['calibration.precision'].numpy(), u['threshold'], u['max_count'], c.get('level', 0.9))

def body_features(model, dl) -> tuple:
    "Pooled body features and counts for every item of `dl`, in order, in eval mode"
    body,head = model[0],model[1:]
    fs,ps = [],[]
    model.eval()
    with torch.inference_mode():
        for b in dl:
            f = body(b[0])
            fs.append(f.float().mean((2,3)).cpu()); ps.append(head(f).float().flatten().cpu())
    return torch.cat(fs).numpy(),torch.cat(ps).numpy()

def calibrate(learn, # A trained count `Learner`
              level=0.9, # Default interval level
              flag_pct=0.01, # Share of held-out images that the fingerprint's threshold flags
              shrink=0.1, # Covariance shrinkage towards its mean variance: 512 features from a few thousand images need it
             ) -> Calibration:
    "Fit conformal intervals on the validation set and a fingerprint of the training images (without augmentation)"
    tr = learn.dls.valid.new(learn.dls.train_ds, shuffle=False, drop_last=False) # validation transforms: no augmentation
    f_tr,_ = body_features(learn.model, tr)
    f_va,p_va = body_features(learn.model, learn.dls.valid)
    y_va = np.asarray([float(y) for y in learn.dls.valid_ds.tls[1]], np.float64)
    mean = f_tr.mean(0)
    cov = np.cov(f_tr - mean, rowvar=False).reshape(f_tr.shape[1], f_tr.shape[1])
    cov = (1-shrink)*cov + shrink*np.trace(cov)/len(cov)*np.eye(len(cov)) + 1e-6*np.eye(len(cov))
    cal = Calibration(np.abs(y_va - p_va)/_spread(p_va), mean, np.linalg.inv(cov), 0., max(float(y) for y in learn.dls.train_ds.tls[1]), level)
    cal.threshold = float(np.quantile(cal.distance(f_va), 1-flag_pct))
    return cal
