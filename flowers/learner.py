"""A fastai `Learner` that counts: a torchvision ResNet with one output, and where its weights come from."""
import math, warnings, torch, torchvision
from pathlib import Path
from fastai.vision.all import *
from .errors import FlowersError, first_line
from .settings import ARCHS, MAP_CUTS, MAP_STRIDE, MAP_CONTEXT, LOSS_NAMES, check_arch, check_norm, check_stem, check_head, check_context, check_loss, check_pretrained
from .density import PointSupervision, count_model_args, drop_points, has_points, init_map_bias, set_stem, map_stride
from .ibn import to_ibn

__all__ = ['ARCHS', 'LOSSES', 'get_arch', 'weights_file', 'pretrained_available', 'resolve_pretrained',
           'load_body_weights', 'check_loss', 'check_head', 'body_cut', 'init_output', 'count_y_range', 'count_learner']

LOSSES = dict(zip(LOSS_NAMES, (MSELossFlat, L1LossFlat, partial(BaseLoss, nn.HuberLoss, floatify=True))))

def get_arch(arch):
    "The torchvision model function named `arch`, or `arch` itself if it is one"
    check_arch(arch)
    return arch if callable(arch) else getattr(torchvision.models, arch)

def weights_file(arch) -> Path:
    "Where torchvision caches the ImageNet weights of `arch` (under `$TORCH_HOME/hub/checkpoints`)"
    w = torchvision.models.get_model_weights(get_arch(arch)).DEFAULT
    return Path(torch.hub.get_dir())/'checkpoints'/Path(w.url).name

def pretrained_available(arch) -> bool:
    "Are ImageNet weights for `arch` in the cache, or can they be downloaded there now?"
    if weights_file(arch).is_file(): return True
    try: torchvision.models.get_model_weights(get_arch(arch)).DEFAULT.get_state_dict(progress=True)
    except Exception: return False # offline, blocked, or a partial download: all mean random init
    return weights_file(arch).is_file()

def _missing_msg(arch):
    f = weights_file(arch)
    w = torchvision.models.get_model_weights(get_arch(arch)).DEFAULT
    return (f"ImageNet weights for {arch} are not available: {f.name} is not in {f.parent} and could not be downloaded. "
            f"Download {w.url} and put it in that folder (or set TORCH_HOME), or pass --weights FILE")

def resolve_pretrained(arch, # Architecture name
                       pretrained='auto', # 'auto': use ImageNet weights if available; 'yes': require them; 'no': random init
                      ) -> bool:
    "Whether to start from ImageNet weights; 'auto' warns once and falls back to random init when they're unavailable"
    pretrained = check_pretrained(pretrained)
    if pretrained=='no': return False
    if pretrained_available(arch): return True
    if pretrained=='yes': raise FlowersError(_missing_msg(arch))
    warnings.warn(_missing_msg(arch) + '. Training from random init instead.', stacklevel=2)
    return False

def body_cut(arch, head='map', stride=MAP_STRIDE):
    "Where the body of `arch` ends for `head`: before layer3 or layer4 for a count map (`MAP_CUTS`), fastai's usual cut for a pooled head"
    return MAP_CUTS[stride] if head=='map' else model_meta[get_arch(arch)]['cut']

def load_body_weights(learn, arch, fname, head='map', stride=MAP_STRIDE):
    "Load a torchvision state dict for `arch` from `fname` into the body of `learn`'s model"
    fname = Path(fname)
    if not fname.is_file(): raise FlowersError(f"--weights {fname}: file not found")
    try: sd = torch.load(fname, map_location='cpu', weights_only=True)
    except Exception as e:
        why = 'it needs pickle to load, which can run code' if 'Weights only load failed' in str(e) else first_line(e)
        raise FlowersError(f"--weights {fname}: not a PyTorch state dict ({why}); save one with torch.save(model.state_dict(), '{fname.name}')") from None
    if isinstance(sd, dict) and isinstance(sd.get('state_dict', sd.get('model')), dict): sd = sd.get('state_dict', sd.get('model'))
    if not isinstance(sd, dict): raise FlowersError(f"--weights {fname}: holds a {type(sd).__name__}, not a state dict")
    m,cut = get_arch(arch)(weights=None),body_cut(arch, head, stride)
    body = [n for n,_ in list(m.named_children())[:cut]]
    # only the body's tensors are used: a ResNet trained on other classes (its fc of another size) gives its body as any other
    ours,sd = [k for k in m.state_dict() if k.split('.')[0] in body],{k:v for k,v in sd.items() if isinstance(k, str) and k.split('.')[0] in body}
    if not sd: raise FlowersError(f"--weights {fname}: none of its tensors belong to a torchvision {arch}")
    # a resnet34's weights given for a resnet18 filled its blocks with the 34's first ones, unsaid (batch-norm step counts: older files lack them)
    other,gone = sorted(set(sd) - set(ours)),sorted(k for k in set(ours) - set(sd) if not k.endswith('num_batches_tracked'))
    if other or gone:
        eg = f"{len(other)} tensors a {arch} lacks (e.g. {other[0]})" if other else f"none of {len(gone)} tensors of the {arch} body (e.g. {gone[0]})"
        raise FlowersError(f"--weights {fname}: has {eg}; are they another architecture's? Pass the --arch they were saved from")
    if bad := [k for k,v in sd.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]:
        raise FlowersError(f"--weights {fname}: {bad[0]} holds NaN or infinite values; the file is damaged")
    try: m.load_state_dict(sd, strict=False)
    except Exception as e: raise FlowersError(f"--weights {fname}: does not fit {arch} ({first_line(e)})")
    learn.model[0].load_state_dict(create_body(m, 3, True, cut).state_dict())
    return learn

def count_y_range(counts, # Training counts
                 ) -> tuple:
    "A `y_range` whose sigmoid keeps predictions above 0 yet lets them reach the largest count"
    return (0., float(max(map(float, counts)))*1.1 + 1.)

def init_output(model):
    "Zero the last layer's weights: every prediction starts mid-range, instead of saturated at 0 or the top by random features"
    last = [m for m in model[-1].modules() if isinstance(m, nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None: nn.init.zeros_(last.bias)
    return model

def count_learner(dls, # `DataLoaders` from `count_dls`
                  arch='resnet34', # torchvision ResNet name (or model function)
                  head='map', # 'map': counts per location, summed (no upper limit; taught head positions when the data have them); 'pool': fastai's pooled head
                  stride=MAP_STRIDE, # Input pixels per cell of the count map ('map' head) with torchvision's stem: 8 or 16 (twice that with `stem` 4)
                  context=MAP_CONTEXT, # Dilated layers in the count map's head, so each location sees its surroundings ('map' head)
                  pretrained=True, # Start the body from ImageNet weights (fastai's usual cache)
                  weights=None, # A local torchvision state dict for the body instead
                  loss='mse', # 'mse', 'l1' or 'huber'
                  norm='bn', # The first norm of the body's blocks: 'bn', or 'ibn' (half instance norm, `to_ibn`)
                  stem=2, # Input pixels per step of the body's first convolution: 2 (torchvision's) or 4 (`set_stem`)
                  y_range=None, # Output range of the 'pool' head; default from the training counts
                  ps=0., # Dropout in the 'pool' head: none, since it adds noise to a count (held-out MAE 3.6 vs 4.2 at ps=0.5, 4 epochs)
                  **kwargs, # Passed to `vision_learner`
                 ) -> Learner:
    "A `vision_learner` with one output trained to match the count"
    check_loss(loss); check_head(head, stride); check_context(context); check_norm(norm); check_stem(stem)
    counts = dls.train_ds.tls[1] # targets only: no image is opened
    if head=='pool':
        if y_range is None: y_range = count_y_range(counts)
        drop_points(dls, keep=False) # head positions teach only the map: fastai's loss takes (pred, count)
    if head=='map':
        y_range = None
        if has_points(dls): kwargs['cbs'] = L(kwargs.get('cbs')) + PointSupervision()
    pretrained = bool(pretrained) and weights is None
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*weights.*') # torchvision's deprecation chatter
        margs = count_model_args(get_arch(arch), head, stride, context)
        cut = margs.pop('cut', None) # fastai 2.8's `vision_learner` does not pass `cut` on to `create_vision_model`
        # MAE over the gathered predictions, as fastai's rmse and R2Score are: its plain `mae` averages per-batch values, and in a
        # data-parallel run kept only rank 0's half of the validation set (history and the best checkpoint were 9% off the report)
        try: learn = vision_learner(dls, get_arch(arch), n_out=1, pretrained=pretrained, loss_func=LOSSES[loss](),
                                    metrics=[AccumMetric(mae), rmse, R2Score()], y_range=y_range, ps=ps, **margs, **kwargs)
        except Exception as e: # a web page saved as the .pth, or another ResNet's file under its name: torch's traceback said neither
            if not pretrained: raise
            f = weights_file(arch)
            raise FlowersError(f"ImageNet weights {f} can't be loaded ({first_line(e)}): the file is damaged "
                               f"or not {arch}'s. Delete it to download it again, or put the right file there, or pass --pretrained no") from None
    if cut is not None:
        learn.model[0] = learn.model[0][:cut - model_meta[get_arch(arch)]['cut']] # so layer4 goes here
        learn.opt = None # `vision_learner` froze, and so made an optimizer, for the body before the cut
        if pretrained: learn.freeze()
    set_stem(learn.model[0], stem)
    if not dls.after_batch.fs.filter(risinstance(Normalize)): # `count_dls` has it; fastai adds it only for pretrained bodies
        dls.add_tfms([Normalize.from_stats(*imagenet_stats)], 'after_batch')
    # lr_find then sees the network learning, not the output leaving saturation or a random count map
    if head=='pool': init_output(learn.model)
    else:
        size = first(dls.after_item.fs.filter(risinstance(Resize))).size[0]
        init_map_bias(learn.model, sum(map(float, counts))/max(1, len(counts)), math.ceil(size/map_stride(learn.model))**2)
    if weights is not None:
        load_body_weights(learn, arch, weights, head, stride)
        learn.freeze()
        learn.pretrained = True
    if norm=='ibn': # after any pretrained weights, which it starts from; the optimiser is made anew for its layers
        to_ibn(learn.model[0])
        learn.opt = None
        if pretrained or weights is not None: learn.freeze()
    return learn
