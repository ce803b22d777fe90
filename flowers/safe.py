"""The safe model format: `model.safetensors` (weights) and `model.json` (how to rebuild and feed the network)."""
import hashlib, json, math
from pathlib import Path
from fastai.vision.all import *
from safetensors.torch import save_file, load_file
from .errors import FlowersError, first_line
from .settings import MAX_CONTEXT, FORMAT, NORMS, STEMS, model_file
from .learner import ARCHS, get_arch
from .density import HEAD_TYPES, CountMapHead, count_model, map_stride, map_context, body_stem, cell_strides
from .calibrate import Calibration
from .ibn import body_norm
from .atomic import atomic_path, atomic_text

__all__ = ['FORMAT', 'NET_KEYS', 'input_spec', 'safe_meta', 'check_meta', 'save_safe', 'load_safe']


def _sha256(fname): return hashlib.sha256(Path(fname).read_bytes()).hexdigest()

NET_KEYS = ('arch','n_out','y_range','ps','size','method','normalize','conformal','unusual','head','stride','context','norm','stem') # what builds, feeds and qualifies the network: hashed with the weights
_LATER_KEYS = ('head','stride','context','norm','stem') # hashed only when present, so that models saved before them still check
MAX_SIZE = 2048 # pixels; a bigger input would take tens of GB to count one image

def _net_sha256(weights, meta):
    "sha256 of the weights and of the `NET_KEYS` of `meta`: an edit to either is caught"
    h = hashlib.sha256(Path(weights).read_bytes())
    h.update(json.dumps({k:meta.get(k) for k in NET_KEYS if k in meta or k not in _LATER_KEYS}, sort_keys=True).encode())
    return h.hexdigest()

def _num(v): return isinstance(v, (int,float)) and not isinstance(v, bool) and math.isfinite(v)
def _nums(v, n): return isinstance(v, list) and len(v)==n and all(map(_num, v))
def _misfit(model, sd) -> str:
    "Which of the weights `sd` and `model`'s don't pair up, counted and one of each named; torch's message said only its first line"
    own = model.state_dict()
    kinds = (([k for k in own if k not in sd], 'missing'), ([k for k in sd if k not in own], 'not in the network'),
             ([k for k in own if k in sd and own[k].shape!=sd[k].shape], 'of another shape'))
    return '; '.join(f"{len(ks)} {what}, e.g. {ks[0]}" for ks,what in kinds if ks)

def _one_of(v, opts): return isinstance(v, (str, int)) and not isinstance(v, bool) and v in opts # a list or dict there is no key of `opts`, not a TypeError

def check_meta(meta:dict, # `model.json` as read
               jfile, # Its name, for messages
              ) -> dict:
    "`meta` if every field `load_safe` uses is present and sane, else one `FlowersError` naming the field"
    def bad(k, want): raise FlowersError(f"{jfile}: field {k!r} is {meta.get(k, 'missing')!r}; it must be {want}. Re-export the model rather than editing this file")
    if not _one_of(meta.get('arch'), ARCHS): bad('arch', f"one of {', '.join(ARCHS)}")
    if meta.get('n_out')!=1: bad('n_out', '1 (one count)')
    if not _one_of(meta.get('head', 'pool'), HEAD_TYPES): bad('head', f"one of {', '.join(HEAD_TYPES)}")
    if not _one_of(meta.get('stem', 2), STEMS): bad('stem', f"one of {', '.join(map(str, STEMS))}")
    cells = cell_strides(meta.get('stem', 2))
    if not _one_of(meta.get('stride', 16), cells): bad('stride', f"one of {', '.join(map(str, cells))}")
    if not _one_of(meta.get('context', 0), range(MAX_CONTEXT+1)): bad('context', f"a whole number from 0 to {MAX_CONTEXT}")
    if not _one_of(meta.get('norm', 'bn'), NORMS): bad('norm', f"one of {', '.join(NORMS)}")
    y = meta.get('y_range')
    if meta.get('head', 'pool')=='pool' and not (_nums(y, 2) and 0 <= y[0] < y[1]): bad('y_range', 'two finite numbers [low, high] with 0 <= low < high')
    if not (_num(meta.get('ps', 0.5)) and 0 <= meta.get('ps', 0.5) < 1): bad('ps', 'a dropout probability in [0, 1)')
    size = meta.get('size')
    if not (isinstance(size, int) and not isinstance(size, bool) and 8 <= size <= MAX_SIZE): bad('size', f'a whole number of pixels from 8 to {MAX_SIZE}')
    if not _one_of(meta.get('method'), ('squish','pad')): bad('method', "'squish' or 'pad'")
    norm = meta.get('normalize')
    if norm is not None and not (isinstance(norm, dict) and _nums(norm.get('mean'), 3) and _nums(norm.get('std'), 3) and min(norm['std']) > 0):
        bad('normalize', 'null or {"mean": [3 numbers], "std": [3 numbers above 0]}')
    return meta

def input_spec(learn) -> dict:
    "How `learn` feeds images to its network: resize `size` and `method`, and `normalize` stats (or None)"
    rs = first(learn.dls.after_item.fs.filter(risinstance(Resize)))
    norm = first(learn.dls.after_batch.fs.filter(risinstance(Normalize)))
    return dict(size=int(rs.size[0]), method=rs.method,
                normalize=dict(mean=norm.mean.flatten().tolist(), std=norm.std.flatten().tolist()) if norm is not None else None)

def safe_meta(learn, arch, **extra) -> dict:
    "What `load_safe` needs to rebuild `learn`'s network and feed it like fastai does"
    if isinstance(learn.model[-1], CountMapHead):
        return dict(format=FORMAT, arch=arch, n_out=learn.n_out, head='map', stride=map_stride(learn.model), context=map_context(learn.model[-1]),
                    norm=body_norm(learn.model[0]), stem=body_stem(learn.model[0]), **input_spec(learn), **extra)
    y_range = learn.model[-1][-1]
    drops = [m.p for m in learn.model[-1].modules() if isinstance(m, nn.Dropout)]
    return dict(format=FORMAT, arch=arch, n_out=learn.n_out, head='pool', y_range=[float(y_range.low), float(y_range.high)],
                ps=drops[-1] if drops else 0., norm=body_norm(learn.model[0]), stem=body_stem(learn.model[0]), **input_spec(learn), **extra) # ps: fastai's head has no dropout layers at 0

def save_safe(learn, # A trained count `Learner`
              path, # Folder to write `model.safetensors` and `model.json` to
              arch, # The architecture name `learn` was built with
              **extra, # More to record in `model.json` (column names, versions, ...)
             ) -> Path:
    "Write the weights as safetensors and the rest as JSON, with the weights' sha256"
    path = Path(path)
    # what its run recorded of its training (`flowers.fitting`), kept from a loaded `export.pkl` too
    if isinstance(info := getattr(learn, 'train_info', None), dict): extra = dict(train_info=info, **extra)
    sd = {k:v.detach().cpu().contiguous() for k,v in learn.model.state_dict().items()}
    cal = getattr(learn, 'calibration', None)
    cal_meta,cal_tensors = cal.to_meta() if cal is not None else ({},{})
    with atomic_path(path/'model.safetensors') as tmp:
        save_file({**sd, **cal_tensors}, tmp)
        meta = safe_meta(learn, arch, **extra, **cal_meta, sha256=_sha256(tmp))
        meta['net_sha256'] = _net_sha256(tmp, meta)
    atomic_text(path/'model.json', json.dumps(meta, indent=2))
    return path/'model.safetensors'

def load_safe(path, # `model.safetensors` or `model.json` (the other is found beside it)
             ) -> tuple:
    "The network rebuilt with `count_model` and its weights, the metadata, and its `Calibration` (or None); no pickle"
    path = Path(path)
    weights,jfile = path.with_suffix('.safetensors'),path.with_suffix('.json')
    model_file(path)
    try: meta = json.loads(jfile.read_text())
    except (ValueError, UnicodeDecodeError) as e: raise FlowersError(f"{jfile}: not valid JSON ({e})")
    if not isinstance(meta, dict) or meta.get('format')!=FORMAT: raise FlowersError(f"{jfile}: not a flowers model description (format {FORMAT})")
    if meta.get('sha256') and _sha256(weights)!=meta['sha256']:
        raise FlowersError(f"{weights}: its sha256 does not match {jfile.name}; the file is truncated, corrupt or from another model")
    # every export that records one of the later keys hashes its settings: without the hash, a stem edited from 3 to 2 loaded, and counted wrongly
    if not meta.get('net_sha256') and (later := [k for k in _LATER_KEYS if k in meta]):
        raise FlowersError(f"{jfile}: its net_sha256 was removed (every export that records {later[0]!r} writes it), so edits to its settings can't be caught; re-export the model")
    if meta.get('net_sha256') and _net_sha256(weights, meta)!=meta['net_sha256']:
        raise FlowersError(f"{jfile}: its settings ({', '.join(NET_KEYS)}) were changed after export (net_sha256 does not match); re-export the model")
    check_meta(meta, jfile)
    try: sd = load_file(weights)
    except Exception as e: raise FlowersError(f"{weights}: not a readable safetensors file ({e})")
    cal = {k:sd.pop(k) for k in [k for k in sd if k.startswith('calibration.')]}
    head = meta.get('head', 'pool') # models saved before `head` was recorded had the pooled one
    pool = dict(y_range=tuple(meta['y_range']), ps=meta.get('ps', 0.5)) if head=='pool' else {} # before `ps` was recorded: fastai's default
    arch = get_arch(meta['arch'])
    stem = meta.get('stem', 2) # torchvision's before `stem` was recorded
    stride = cell_strides(stem)[meta.get('stride', 16)] # count maps saved before `stride` was recorded had cells 16 pixels apart
    context = meta.get('context', 0) # and one plain layer in their heads before `context` was
    model = count_model(arch, head, stride, context, meta['n_out'], norm=meta.get('norm', 'bn'), stem=stem, **pool) # batch norm before `norm` was recorded
    try: model.load_state_dict(sd)
    except RuntimeError as e:
        raise FlowersError(f"{weights}: its weights don't fit the network {jfile.name} describes ({_misfit(model, sd) or first_line(e)}): "
                           f"the two files are from different models, or {jfile.name} was edited. Use the pair one export wrote") from None
    try: cal = Calibration.from_meta(meta, cal)
    except (KeyError, TypeError, ValueError) as e: raise FlowersError(f"{jfile}: its calibration fields are incomplete or invalid ({e}); re-export the model")
    return model.eval(),meta,cal
