"""Counting by maps: a head that predicts a count per location and adds them up, taught where the heads are when that is known."""
import math, torch.distributed as dist
from fastai.vision.all import *
from fastai.distributed import DistributedDL
from .settings import HEAD_TYPES, MAP_CUTS, MAP_STRIDE, MAP_CONTEXT, STEMS
from .ibn import to_ibn
from .budget import BatchTimer

__all__ = ['HEAD_TYPES', 'MAP_CUTS', 'MAP_STRIDE', 'MAP_CONTEXT', 'STEMS', 'set_stem', 'cell_strides', 'body_stem', 'map_stride', 'map_context', 'CountMapHead', 'count_model_args', 'count_model', 'init_map_bias', 'point_targets', 'extent_targets', 'pad_points',
           'map_deviance', 'PointSupervision', 'drop_points', 'restore_points', 'has_points']

class CountMapHead(nn.Module):
    "Non-negative counts per location of the body's features; the image's count is their sum, with no upper limit"
    def __init__(self, nf, # Channels of the body's output
                 hidden=128, # Channels of its hidden layers
                 context=MAP_CONTEXT, # Dilated layers after the first (dilation 2, 4, ...), so each location sees its surroundings
                ):
        super().__init__()
        # context tells a head from litter that looks like one: a leaf among many leaves is ground (README, Generalisation)
        wide = [ConvLayer(hidden, hidden, ks=3, dilation=2**i, padding=2**i) for i in range(1, context+1)]
        self.density = nn.Sequential(ConvLayer(nf, hidden, ks=3), *wide, nn.Conv2d(hidden, 1, 1), nn.Softplus())

    def forward(self, x): return self.density(x).sum((2,3))

def count_model_args(arch, # A torchvision ResNet function
                     head='map', # One of `HEAD_TYPES`
                     stride=MAP_STRIDE, # Input pixels per cell of the count map: a key of `MAP_CUTS`
                     context=MAP_CONTEXT, # Dilated layers in the count map's head
                    ) -> dict:
    "The `cut` and `custom_head` arguments of `vision_learner`/`create_vision_model` for `head`"
    if head=='pool': return {}
    body = create_body(arch(weights=None), cut=MAP_CUTS[stride])
    return dict(cut=MAP_CUTS[stride], custom_head=CountMapHead(num_features_model(body), context=context))

def set_stem(body, # A cut torchvision ResNet
             stem=2, # Input pixels per step of its first convolution: one of `STEMS`
            ) -> nn.Sequential:
    "`body` with its first convolution stepping `stem` pixels; in place. Its weights are the same: only the step changes"
    # 3 or 4 on images 1.5 or 2 times the size a side: the maps after it, and so the work, are those of torchvision's 2 at the smaller
    # size, with the details of more pixels for the 7 x 7 kernel to learn from (README, Generalisation)
    body[0].stride = (stem, stem)
    return body

def cell_strides(stem=2) -> dict:
    "Input pixels between a count map's cells -> the `MAP_CUTS` key giving them, for a body whose first convolution steps `stem` pixels"
    return {k*stem//2: k for k in MAP_CUTS} # a stem that steps 1.5 or 2 times as far puts the cells that much farther apart

def body_stem(body) -> int:
    "Input pixels per step of the first convolution of `body`"
    return body[0].stride[0]

def count_model(arch, # A torchvision ResNet function
                head='map', # One of `HEAD_TYPES`
                stride=MAP_STRIDE, # Input pixels per cell of the count map with torchvision's stem (`stem`/2 times that with another): a key of `MAP_CUTS`
                context=MAP_CONTEXT, # Dilated layers in the count map's head
                n_out=1, # Outputs
                norm='bn', # The first norm of the body's blocks: 'bn', or 'ibn' (`to_ibn`)
                stem=2, # Input pixels per step of the body's first convolution (`set_stem`)
                **kwargs, # `y_range`, `ps` of the pooled head
               ) -> nn.Module:
    "The network `count_learner` trains, without pretrained weights: fastai's `create_vision_model` with the head for `head`"
    model = create_vision_model(arch, n_out, pretrained=False, **kwargs, **count_model_args(arch, head, stride, context))
    if norm=='ibn': to_ibn(model[0])
    set_stem(model[0], stem)
    return model

def map_stride(model) -> int:
    "Input pixels per cell of the count map of `model` (body, `CountMapHead`), measured on a blank input"
    was,p = model.training,next(model.parameters())
    model.eval()
    with torch.no_grad(): n = model[0](p.new_zeros(1, 3, 96, 96)).shape[-1] # 96: a whole number of cells 8, 12, 16, 24 or 32 pixels wide
    model.train(was)
    return 96//n

def map_context(head) -> int:
    "Dilated layers of the `CountMapHead` `head`: 0 for those made before they were"
    return len(head.density) - 3 # the first layer, the 1x1 convolution and the softplus

def init_map_bias(model, # A model whose head is a `CountMapHead`
                  mean_count, # Mean training count
                  cells, # Locations of its map at the training size
                 ):
    "Start with the mean count spread evenly, and no dependence on the image: the first steps then learn, not unlearn"
    last = model[1].density[-2]
    nn.init.zeros_(last.weight)
    per = max(float(mean_count)/cells, 1e-3)
    nn.init.constant_(last.bias, per + math.log(-math.expm1(-per))) # softplus's inverse
    return model

def point_targets(pts, # (bs, n, 2) head centres in fastai's -1..1 coordinates; padding lies outside
                  h, w, # Size of the map
                 ) -> Tensor:
    "Each head's count of 1 in the map cell its centre lies in: (bs, 1, h, w) summing to the counts"
    # not shared between the 4 nearest cells: on all 3 held-out pairs validation MAE was lower or equal and empty fields lower (README)
    bs = pts.shape[0]
    inside = (pts.abs() <= 1).all(-1)
    xi = ((pts[...,0]+1)*w/2).floor().clamp(0, w-1).long()
    yi = ((pts[...,1]+1)*h/2).floor().clamp(0, h-1).long()
    b = torch.arange(bs, device=pts.device)[:,None].expand_as(xi)
    out = pts.new_zeros(bs*h*w)
    out.index_add_(0, (b*h*w + yi*w + xi)[inside], pts.new_ones(xi.shape)[inside])
    return out.view(bs, 1, h, w)

def extent_targets(pts, # (bs, n, 2) head centres in fastai's -1..1 coordinates; padding lies outside
                   rims, # (bs, n, 2) a point on each head's rim, moved with the image as its centre was; padding there too
                   h, w, # Size of the map
                  ) -> Tensor:
    "Which map cells lie on a head: (bs, 1, h, w), True where a cell's centre is nearer a head's centre than its radius"
    r = (rims - pts).norm(dim=-1)
    ys,xs = torch.meshgrid((torch.arange(h, device=pts.device)+.5)*2/h - 1, (torch.arange(w, device=pts.device)+.5)*2/w - 1, indexing='ij')
    cells = torch.stack([xs, ys], -1).view(1, 1, h*w, 2)
    return ((cells - pts[:, :, None]).norm(dim=-1) < r[..., None]).any(1).view(-1, 1, h, w)

def pad_points(samples, # (image, count, points) items, or (image, count, points, rims)
               pad=-10., # Where padding points go: outside the image, also after rotation and zoom
              ) -> list:
    "Pad every item's points (and rims) to the batch's largest number, so that they collate"
    if not samples or len(samples[0])<3: return samples # images to count (`test_dl`, `predict`) have no points
    n = max(1, max(len(s[2]) for s in samples))
    def _pad(p):
        # on a plain tensor, wrapped once: each op on a `TensorPoint` goes through fastai's `__torch_function__`, 3x the time here
        t = p.as_subclass(Tensor).reshape(-1, 2)
        return TensorPoint(torch.cat([t, t.new_full((n-len(t), 2), pad)]) if len(t)<n else t, **p.__dict__)
    return [(*s[:2], *map(_pad, s[2:])) for s in samples]

def map_deviance(pred, # Predicted counts per cell, non-negative
                 targ, # Taught counts per cell (`point_targets`)
                ) -> Tensor:
    "Poisson deviance per cell (half of it), 0 where `pred` is `targ`"
    # counts per cell are Poisson-like, and unlike squared error this keeps a gradient on thin mass over empty ground
    # through the softplus: validation MAE lower for all 3 held-out pairs and on the default set, held-out MAE 2.10 against 2.13 (README)
    nll = partial(F.poisson_nll_loss, log_input=False, reduction='none')
    return nll(pred, targ) - nll(targ, targ)

class PointSupervision(Callback):
    "Where the data know each head's centre: the map is also taught to put each head's count there, and only there; and with radii, which cells lie on a head"
    order = -5 # before the loss, after `DDPTrainer` has wrapped the model
    # a fit's state, set as it goes; a class's defaults, so that a callback pickled in an older `export.pkl`, which lacks what
    # was added since, trains on (it failed at its first step). `saved`: a file of `extent_state` to start the extent layer
    # from, a resumed run's (`load_checkpoint`); `skipped`: the network skipped this step
    hook = feat = pts = rims = extent = xopt = saved = None
    skipped,extent_weight = False,0. # no extent taught, as before there was one
    def __init__(self, count_weight=.03, # Share of the count's loss beside the map's, which teaches more per image (.1 before: README, Generalisation)
                 extent_weight=.1, # Share of the extent's loss (which cells lie on a head), where the data have radii
                ):
        self.count_weight,self.extent_weight = count_weight,extent_weight

    def extent_state(self) -> dict:
        "The extent layer's weights and its optimiser's state, for a checkpoint; None before the layer's first batch"
        if self.extent is None: return None
        o = self.xopt.state_dict() # fastai's `L`s made plain, for `torch.load(weights_only=True)`
        return dict(layer=self.extent.state_dict(), opt=dict(state=list(o['state']), hypers=[dict(h) for h in o['hypers']]))

    def __getstate__(self):
        # the extent layer teaches the features and goes: the network, its export and the safe format stay as without it
        return {k:v for k,v in self.__dict__.items() if k not in ('hook','feat','extent','xopt','saved','pts','rims','skipped')}

    def before_fit(self):
        m = getattr(self.learn.model, 'module', self.learn.model) # unwrapped from DistributedDataParallel
        self.hook = hook_output(m[1].density, detach=False)
        self.feat = hook_output(m[1].density[-3], detach=False) # what the map's last layer sees

    def after_fit(self):
        for h in (self.hook, self.feat):
            if h is not None: h.remove()
        self.hook = self.feat = None
        # the layer goes on to the run's next fit (`fine_tune`'s unfrozen one made a new layer, whose gradients from a random
        # start went into the features it teaches), but not from `lr_find`'s or `time_batches`', which are undone
        if any(isinstance(cb, (LRFinder, BatchTimer)) for cb in self.learn.cbs): self.extent = self.xopt = None
        # between fits the data decode (image, count), as `learn.predict` and `get_preds` need straight after `fit`
        drop_points(self.learn.dls)

    def before_train(self): restore_points(self.learn.dls) # the next fit is taught where the heads are again

    def before_batch(self):
        # the points are for this callback only: the loss and the metrics see (image, count) as without them
        self.pts,self.rims = (list(self.yb[1:]) + [None, None])[:2]
        if self.pts is not None: self.learn.yb = self.yb[:1]

    def after_loss(self):
        if not self.training or self.pts is None or self.hook is None: return
        d = self.hook.stored
        pts = self.pts.as_subclass(Tensor).float()
        t = point_targets(pts, *d.shape[-2:])
        err = map_deviance(d, t).sum((1,2,3)).mean()
        # dense labels, every cell of every image: a clump of coloured leaves is ground all over, not only away from the heads' centres
        if self.rims is not None and self.extent_weight: err = err + self.extent_weight*self._extent_loss(pts, t)
        self.learn.loss_grad = self.count_weight*self.loss_grad + err
        self.learn.loss = self.loss_grad.clone()

    def _extent_loss(self, pts, t):
        "Cross-entropy of a 1x1 layer over the map's features saying which cells lie on a head (a head smaller than a cell: its own)"
        f = self.feat.stored.float()
        if self.extent is None or self.extent.in_channels!=f.shape[1]: # the callback's own: not in the network, so not in its export either
            self.extent = nn.Conv2d(f.shape[1], 1, 1).to(f.device)
            self.xopt = Adam(list(self.extent.parameters()), lr=float(self.opt.hypers[-1]['lr']))
            # a resumed run goes on with the layer it had: a new one's gradients, from a random start, went into the features it teaches
            if self.saved is not None:
                st = torch.load(self.saved, map_location=f.device, weights_only=True)
                self.extent.load_state_dict(st['layer']); self.xopt.load_state_dict(dict(state=st['opt']['state'], hypers=L(st['opt']['hypers'])))
                self.saved = None
            elif _data_parallel(): # each process made its own: all start from rank 0's
                for q in self.extent.parameters(): dist.broadcast(q.data, 0)
        on = extent_targets(pts, self.rims.as_subclass(Tensor).float(), *t.shape[-2:]) | (t > 0)
        return F.binary_cross_entropy_with_logits(self.extent(f), on.float(), reduction='none').sum((1,2,3)).mean()

    def after_cancel_step(self): self.skipped = True # fp16's loss scaling found an overflow, and the network did not step

    def after_step(self):
        if self.xopt is None: return
        skipped,self.skipped = self.skipped,False
        qs = [q for q in self.extent.parameters() if q.grad is not None]
        if _data_parallel(): # as DDP does for the network's: one layer, taught by every process's batches, not one per process
            for q in qs: dist.all_reduce(q.grad); q.grad /= num_distrib()
        # fp16 (fastai's `MixedPrecision`) scales the loss and unscales only the network's gradients; an overflow's inf stepped
        # this layer to NaN at a GPU run's first step, and every loss after it was NaN
        scaler = getattr(self.learn, 'scaler', None)
        if scaler is not None and scaler.is_enabled():
            for q in qs: q.grad /= scaler.get_scale()
        if skipped or not all(q.grad.isfinite().all() for q in qs): return self.xopt.zero_grad()
        for k in ('lr','mom','wd'): # the head's, as the schedule moves them
            if k in self.opt.hypers[-1]: self.xopt.set_hyper(k, float(self.opt.hypers[-1][k]))
        self.xopt.step(); self.xopt.zero_grad()

def _data_parallel() -> bool:
    "Training in several processes now: not in a fit of rank 0 alone (`lr_find`, in `flowers.distributed.alone`), where the others would never answer"
    return num_distrib() > 1 and dist.is_initialized()

def _loaders(dls):
    "`dls`' own loaders, also while `DDPTrainer` has wrapped them for a fit"
    return [dl.dl if isinstance(dl, DistributedDL) else dl for dl in dls.loaders]

def drop_points(dls, # `DataLoaders` from `count_dls`
                keep=True, # Keep what goes, for `restore_points`
               ):
    "`dls` as data of (image, count) only, as `predict` decodes them: head positions are for training"
    for dl in _loaders(dls):
        if not keep: dl.points_kept = None
        if len(dl.dataset.tls)<3: continue
        cache = getattr(dl, 'cache', None)
        if keep: dl.points_kept = dl.dataset.tls,cache
        dl.dataset.tls = dl.dataset.tls[:2]
        if cache is not None: dl.cache = {k:v[:2] for k,v in cache.items()} # a new dict: the kept one stays as it was
    return dls

def restore_points(dls):
    "`dls` with the head positions `drop_points` kept"
    for dl in _loaders(dls):
        kept = getattr(dl, 'points_kept', None)
        if kept is None: continue
        dl.dataset.tls,cache = kept
        if cache is not None: dl.cache = cache
        dl.points_kept = None
    return dls

def has_points(dls) -> bool:
    "Do `dls` carry head positions, shown or kept for `PointSupervision`?"
    return any(len(dl.dataset.tls)>2 or getattr(dl, 'points_kept', None) for dl in _loaders(dls))
