"""Augmentation that never changes the count: nothing is cropped away, and no head is added or removed."""
import math
from functools import partial
from fastai.vision.all import *

__all__ = ['rotate_fit_mat', 'squash_mat', 'RotateFit', 'DihedralTrain', 'RandomBlur', 'RandomNoise', 'JITTER_AUG', 'count_tfms']

def rotate_fit_mat(x:Tensor, # Batch the matrices are for
                   max_deg:float=10, # Largest rotation in degrees
                   p:float=0.5, # Probability of rotating each image
                   draw=None, # Fixed angles instead of random ones
                   batch:bool=False, # One angle for the whole batch
                  ):
    "Rotation matrices scaled down so the whole rotated image stays in frame: no head is cut off at a corner"
    m = rotate_mat(x, max_deg=max_deg, p=p, draw=draw, batch=batch)
    # sampling coordinates spread by |cos|+|sin| zooms out exactly enough to keep the rotated corners in frame
    m[:,:2,:2] *= (m[:,0,0].abs() + m[:,0,1].abs())[:,None,None]
    return m

def squash_mat(x:Tensor, # Batch the matrices are for
               min_aspect:float=1., # Shortest the squashed axis becomes, as a share of its length
               p:float=0.5, # Probability of squashing each image
               batch:bool=False, # The same for the whole batch
              ):
    "Matrices that shrink the width or the height (at random) to `min_aspect`..1 of it, padding: round heads become ellipses, as seen at an angle"
    n = 1 if batch else x.size(0)
    s = 1/mask_tensor(x.new_empty(n).uniform_(min_aspect, 1.), p=p, neutral=1., batch=batch).expand(x.size(0))
    on_x = (x.new_empty(n).uniform_()<.5).expand(x.size(0))
    sx,sy = torch.where(on_x, s, 1.),torch.where(on_x, 1., s) # a sampling step above 1 shrinks the picture: nothing leaves the frame
    z = torch.zeros_like(s)
    return affine_mat(sx, z, z, z, sy, z)

class RotateFit(AffineCoordTfm):
    "Rotate by at most `max_deg`, zooming out just enough that nothing leaves the frame, zoom out to `min_scale` and squash to `min_aspect`; pads with zeros"
    def __init__(self, max_deg=10, p=0.5, draw=None, size=None, mode='bilinear', batch=False,
                 min_scale=1., # Smallest scale of the zoom-out (fastai's `zoom_mat` below 1 never leaves the frame)
                 p_scale=0.5, # Probability of zooming out
                 min_aspect=1., # Shortest a squashed side becomes (`squash_mat`)
                 p_aspect=0.5, # Probability of squashing
                ):
        fs = [partial(rotate_fit_mat, max_deg=max_deg, p=p, draw=draw, batch=batch)]
        if min_scale<1: fs.append(partial(zoom_mat, min_zoom=min_scale, max_zoom=1., p=p_scale, batch=batch))
        if min_aspect<1: fs.append(partial(squash_mat, min_aspect=min_aspect, p=p_aspect, batch=batch))
        super().__init__(aff_fs=fs, size=size, mode=mode, pad_mode=PadMode.Zeros)

class DihedralTrain(Dihedral):
    "fastai's `Dihedral`, with the rotations `setup_aug_tfms` merges into it, left out of validation and prediction, where it warps by the identity"
    def before_call(self, b, split_idx):
        super().before_call(b, split_idx)
        self.do = not split_idx or self.size is not None # outside training, without a size, an identity warp re-sampled every validation batch: ~5 ms each here, about 2.5 s a default run

class RandomBlur(RandTransform):
    "Gaussian blur of a random strength per image, as from a lens out of focus or a shaky hand"
    order,split_idx = 45,0
    def __init__(self, max_sigma=1., # Largest blur, in pixels of the batch
                 p=0.3): # Probability of blurring each image
        # ours is per image and needs its own name: `RandTransform.__init__` sets `p` (per batch), so a stored `p` became 1 and blurred every image
        super().__init__(p=1.)
        self.max_sigma,self.p_each = max_sigma,p
    def encodes(self, x:TensorImage):
        b,c,h,w = x.shape
        sig = x.new_empty(b).uniform_(0.3, self.max_sigma)*(torch.rand(b, device=x.device)<self.p_each)
        k = int(2*math.ceil(2*self.max_sigma)+1)
        t = torch.arange(k, device=x.device, dtype=x.dtype) - k//2
        g = torch.exp(-t[None]**2/(2*sig.clamp_min(1e-3)[:,None]**2))
        g = g/g.sum(1, keepdim=True) # a sigma near 0 leaves a 1 in the middle: the image is unchanged
        g = g.repeat_interleave(c, 0)[:,None] # one kernel per channel of each image
        y = x.reshape(1, b*c, h, w)
        y = F.conv2d(F.pad(y, (k//2,k//2,0,0), mode='replicate'), g[...,None,:], groups=b*c)
        y = F.conv2d(F.pad(y, (0,0,k//2,k//2), mode='replicate'), g[...,:,None], groups=b*c)
        return y.reshape(b, c, h, w)

class RandomNoise(RandTransform):
    "Gaussian pixel noise of a random strength per image, as from a small sensor in dim light"
    order,split_idx = 50,0
    def __init__(self, max_std=0.05, # Largest noise standard deviation (pixels are 0..1)
                 p=0.5): # Probability of adding noise to each image
        super().__init__(p=1.) # per batch; ours is per image (see `RandomBlur`)
        self.max_std,self.p_each = max_std,p
    def encodes(self, x:TensorImage):
        std = x.new_empty(x.size(0)).uniform_(0, self.max_std)*(torch.rand(x.size(0), device=x.device)<self.p_each)
        return (x + torch.randn_like(x)*std[:,None,None,None]).clamp(0, 1)

# `count_tfms` arguments for photos that vary more than their training set: also zoom-out, colour, blur and noise (the previous default)
JITTER_AUG = dict(min_scale=.75, max_saturation=.5, max_hue=.1, max_blur=1., max_noise=.05)

def count_tfms(max_rotate:float=10., # Largest rotation in degrees (the image is zoomed out to keep it whole)
               max_lighting:float=0.2, # Largest change of brightness and contrast
               p_affine:float=0.75, # Probability of rotating each image
               min_scale:float=1., # Zoom out to as little as this scale, padding with zeros (never crops); e.g. 0.75
               min_aspect:float=1., # Squash the width or the height to as little as this, padding with zeros: heads seen at an angle; e.g. 0.6
               max_saturation:float=0., # Largest change of colour saturation; e.g. 0.5
               max_hue:float=0., # Largest hue shift (fraction of the colour wheel); e.g. 0.1
               max_blur:float=0., # Largest Gaussian blur sigma in pixels of the batch; e.g. 1
               max_noise:float=0., # Largest noise standard deviation (pixels are 0..1); e.g. 0.05
              ) -> list:
    "Batch augmentations that keep every head in the picture: flips, fitted rotation and lighting; zoom-out, colour, blur and noise when asked"
    # the rest is off by default: with colour jitter the map learnt to count leaves and stones (empty fields up to 8 heads),
    # and without colour, zoom-out, blur and noise validation MAE fell on all 3 held-out family pairs, held-out MAE on 2 (README)
    tfms = [DihedralTrain(p=0.5, pad_mode=PadMode.Zeros)] # exact: no interpolation, no padding
    if max_rotate or min_scale<1 or min_aspect<1: tfms.append(RotateFit(max_deg=max_rotate, p=p_affine, min_scale=min_scale, min_aspect=min_aspect))
    if max_lighting: tfms += [Brightness(max_lighting=max_lighting), Contrast(max_lighting=max_lighting)]
    if max_saturation: tfms.append(Saturation(max_lighting=max_saturation))
    if max_hue: tfms.append(Hue(max_hue=max_hue))
    if max_blur: tfms.append(RandomBlur(max_blur))
    if max_noise: tfms.append(RandomNoise(max_noise))
    return setup_aug_tfms(tfms)
