"""The safe model format: `model.safetensors` (weights) and `model.json` (how to rebuild and feed the network)."""
import hashlib, json
from pathlib import Path
from fastai.vision.all import *
from safetensors.torch import save_file, load_file
from .errors import FlowersError
from .learner import get_arch
from .atomic import atomic_path, atomic_text

__all__ = ['FORMAT', 'input_spec', 'safe_meta', 'save_safe', 'load_safe']

FORMAT = 'flowers-count-model/1'

def _sha256(fname): return hashlib.sha256(Path(fname).read_bytes()).hexdigest()

def input_spec(learn) -> dict:
    "How `learn` feeds images to its network: resize `size` and `method`, and `normalize` stats (or None)"
    rs = first(learn.dls.after_item.fs.filter(risinstance(Resize)))
    norm = first(learn.dls.after_batch.fs.filter(risinstance(Normalize)))
    return dict(size=int(rs.size[0]), method=rs.method,
                normalize=dict(mean=norm.mean.flatten().tolist(), std=norm.std.flatten().tolist()) if norm is not None else None)

def safe_meta(learn, arch, **extra) -> dict:
    "What `load_safe` needs to rebuild `learn`'s network and feed it like fastai does"
    y_range = learn.model[-1][-1]
    drops = [m.p for m in learn.model[-1].modules() if isinstance(m, nn.Dropout)]
    return dict(format=FORMAT, arch=arch, n_out=learn.n_out, y_range=[float(y_range.low), float(y_range.high)],
                ps=drops[-1] if drops else 0., **input_spec(learn), **extra) # ps: fastai's head has no dropout layers at 0

def save_safe(learn, # A trained count `Learner`
              path, # Folder to write `model.safetensors` and `model.json` to
              arch, # The architecture name `learn` was built with
              **extra, # More to record in `model.json` (column names, versions, ...)
             ) -> Path:
    "Write the weights as safetensors and the rest as JSON, with the weights' sha256"
    path = Path(path)
    sd = {k:v.detach().cpu().contiguous() for k,v in learn.model.state_dict().items()}
    with atomic_path(path/'model.safetensors') as tmp:
        save_file(sd, tmp)
        meta = safe_meta(learn, arch, **extra, sha256=_sha256(tmp))
    atomic_text(path/'model.json', json.dumps(meta, indent=2))
    return path/'model.safetensors'

def load_safe(path, # `model.safetensors` or `model.json` (the other is found beside it)
             ) -> tuple:
    "The network rebuilt with `create_vision_model(..., pretrained=False)` and its weights, and the metadata; no pickle"
    path = Path(path)
    weights,jfile = path.with_suffix('.safetensors'),path.with_suffix('.json')
    for f in (weights,jfile):
        if not f.is_file(): raise FlowersError(f"{f}: model file not found (the safe format needs both {weights.name} and {jfile.name})")
    try: meta = json.loads(jfile.read_text())
    except (ValueError, UnicodeDecodeError) as e: raise FlowersError(f"{jfile}: not valid JSON ({e})")
    if not isinstance(meta, dict) or meta.get('format')!=FORMAT: raise FlowersError(f"{jfile}: not a flowers model description (format {FORMAT})")
    if meta.get('sha256') and _sha256(weights)!=meta['sha256']:
        raise FlowersError(f"{weights}: its sha256 does not match {jfile.name}; the file is truncated, corrupt or from another model")
    try: sd = load_file(weights)
    except Exception as e: raise FlowersError(f"{weights}: not a readable safetensors file ({e})")
    model = create_vision_model(get_arch(meta['arch']), meta['n_out'], pretrained=False, y_range=tuple(meta['y_range']),
                                ps=meta.get('ps', 0.5)) # models saved before `ps` was recorded had fastai's default
    try: model.load_state_dict(sd)
    except RuntimeError as e: raise FlowersError(f"{weights}: weights don't fit a {meta['arch']} ({str(e).splitlines()[0]})")
    return model.eval(),meta
