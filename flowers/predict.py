"""Counting with a trained model: `load_counter`, batch predictions, and `python -m flowers.predict`."""
import os, pickle, sys, types, warnings, numpy as np, pandas as pd
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from fastai.vision.all import *
from fastcore.script import call_parse
from .errors import FlowersError, check_int, user_errors
from .data import IMG_EXTS, _read_csv, find_img_dir
from .safe import load_safe, input_spec
from .images import open_image, image_size, decode_threads, MIN_SIZE
from .density import CountMapHead, map_stride, spread_cells
from .calibrate import fingerprint
from .progress import progress
from .precision import auto_precision, check_precision

__all__ = ['Counter', 'load_counter', 'load_pkl', 'find_images', 'take_shard', 'predict_table']

class Counter:
    "Counts with a trained network: `predict` one image, `predict_batch` many, in real batches"
    def __init__(self, model, # The network, ending in the count
                 size, # Images are resized to `size` x `size`
                 method='squish', # 'squish' or 'pad', as in training
                 stats=None, # Normalisation `(mean, std)`, or None
                 learn=None, # The fastai `Learner`, when loaded from a `.pkl`
                 meta=None, # What `model.json` says about the model
                 precision='auto', # 'auto', 'fp32', 'bf16' or 'fp16' (CUDA)
                 device=None, # Default: CUDA if available, else the CPU
                 calibration=None, # Its `Calibration`: intervals and unusual-image flags (default: the `Learner`'s)
                ):
        store_attr(but='model,calibration')
        self.calibration = calibration if calibration is not None else getattr(learn, 'calibration', None)
        self.device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
        check_precision(precision, self.device)
        self.precision = auto_precision(self.device) if precision=='auto' else precision
        # channels_last lets oneDNN/cuDNN use their fastest low-precision convolutions
        fmt = torch.channels_last if self.precision!='fp32' else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=fmt)
        self.stride = map_stride(self.model) if isinstance(self.model[1], CountMapHead) else None # input pixels per map cell
        self.fmt = fmt
        self.resize = Resize(size, method=method, pad_mode=PadMode.Zeros)
        self.norm = Normalize.from_stats(*stats, cuda=self.device.type=='cuda') if stats is not None else noop

    @classmethod
    def from_spec(cls, model, spec, **kwargs):
        "A `Counter` for `model` fed as `spec` says (`input_spec`, or `model.json`)"
        norm = spec.get('normalize')
        return cls(model, spec['size'], spec['method'], (norm['mean'], norm['std']) if norm else None, **kwargs)

    @classmethod
    def from_learner(cls, learn, **kwargs):
        "A `Counter` using `learn`'s model, resizing and normalisation"
        return cls.from_spec(learn.model, input_spec(learn), learn=learn, **kwargs)

    def _tensor(self, img, name=None):
        "One image (path, PIL image, array or bytes) as a resized uint8 tensor, decoded at the size needed"
        return image2tensor(self.resize(open_image(img, name, size=self.size), split_idx=1))

    def _tensor_or_error(self, img, name=None):
        try: return self._tensor(img, name)
        except FlowersError as e: return e

    def _input(self, xs):
        "A batch from a list of uint8 tensors of one size: scaled to 0..1, and normalised as the network takes it"
        x01 = torch.stack(xs).to(self.device).float()/255.
        return x01,self.norm(TensorImage(x01)).as_subclass(Tensor).contiguous(memory_format=self.fmt)

    def _dtype(self): return dict(bf16=torch.bfloat16, fp16=torch.float16).get(self.precision)

    def _forward(self, xs, feats=False):
        "Counts for a list of uint8 tensors; with `feats`, also their `fingerprint` features"
        with torch.inference_mode():
            counts,f,_ = fingerprint(self.model, *self._input(xs), dtype=self._dtype())
            return (counts.cpu().numpy(), f.cpu().numpy()) if feats else counts.cpu().numpy()

    def _cells(self, x):
        "The count map's cells, (h, w), for one uint8 tensor of any size"
        if not isinstance(self.model[1], CountMapHead):
            raise FlowersError("this model has fastai's pooled head (--head pool), which makes no count map; train with --head map")
        with torch.inference_mode():
            with torch.autocast(self.device.type, dtype=self._dtype(), enabled=self._dtype() is not None): f = self.model[0](self._input([x])[1])
            return self.model[1].density(f.float())[0,0].float().cpu()

    def _tiled_cells(self, img, tile):
        "Cells of the count map of `img` at the training scale (`tile` of its pixels per model input), window by window"
        tile = check_int('--tile', tile, MIN_SIZE)
        st = self.stride
        pil = open_image(img)
        w,h = [max(st, round(v*self.size/tile/st)*st) for v in pil.size]
        x = image2tensor(pil.resize((w,h), Image.BILINEAR))
        core,m = max(st, self.size//st*st),2*st # each window sees `m` pixels around the part it counts: heads on its edge are whole
        out = torch.zeros(h//st, w//st)
        for y0 in range(0, h, core):
            for x0 in range(0, w, core):
                wy,wx = max(0, y0-m),max(0, x0-m)
                d = self._cells(x[:, wy:y0+core+m, wx:x0+core+m])
                out[y0//st:(y0+core)//st, x0//st:(x0+core)//st] = d[(y0-wy)//st:(y0-wy+core)//st, (x0-wx)//st:(x0-wx+core)//st]
        return out,pil.size

    def count_map(self, img, # A path, `PIL.Image`, numpy array or raw bytes
                  tile=None, # Count at the training scale in windows: `tile` pixels of `img` per model input (see `predict`)
                  max_side=None, # Make the map at most this many pixels a side, in the image's shape (to show it small); same sum
                 ) -> np.ndarray:
        "Where it counted: an H x W float32 map of `img` as opened (EXIF applied), >= 0, summing to `predict(img, tile)`"
        if tile: cells,(w,h) = self._tiled_cells(img, tile)
        else:
            if callable(getattr(img, 'read', None)): img = img.read() # a stream is read once, for its size and its pixels
            (w,h),cells = image_size(img),self._cells(self._tensor(img))
        if max_side and max(w,h) > max_side: w,h = [max(1, round(v*max_side/max(w,h))) for v in (w,h)]
        return spread_cells(cells, w, h, pad=self.method=='pad' and not tile)

    def _calibration(self):
        if self.calibration is None: raise FlowersError("this model has no calibration (trained before intervals were recorded); train it again")
        return self.calibration

    def predict_interval(self, img, # A path, `PIL.Image`, numpy array or raw bytes
                         level=None, # Probability that the interval holds the true count (default: the model's, 0.9)
                        ) -> tuple:
        "`(count, low, high)`: split-conformal, so `level` of images like the validation set have their true count inside"
        count = self.predict(img)
        low,high = self._calibration().interval([count], level)
        return count,float(low[0]),float(high[0])

    def is_unusual(self, img) -> bool:
        "Does `img` look unlike every training image (its features are far from theirs), or have more heads than any?"
        counts,feats = self._forward([self._tensor(img)], feats=True)
        return bool(self._calibration().unusual(feats, counts)[0][0])

    def predict(self, img, # A path, `PIL.Image`, numpy array or raw bytes
                tile=None, # For images larger than the training images: `tile` pixels of `img` per model input, counted window by window
               ) -> float:
        "The count in one image; with `tile`, without the training counts' range as a limit"
        if tile: return float(self._tiled_cells(img, tile)[0].sum())
        return float(self._forward([self._tensor(img)])[0])

    def predict_batch(self, items, # Images: paths, `PIL.Image`s, arrays or bytes
                      bs=64, # Batch size
                     ) -> np.ndarray:
        "Counts for many images, `bs` at a time; raises naming the first unreadable image"
        if isinstance(items, (str, Path, bytes, bytearray, memoryview, Image.Image)) or (isinstance(items, np.ndarray) and items.ndim!=4):
            # a path is iterable too: its characters would each be "counted"
            raise FlowersError(f"predict_batch takes a list of images, not one {type(items).__name__}; use predict(img) or predict_batch([img])")
        df = predict_table(self, list(items), bs=bs, show_progress=False)
        bad = df['error'][df['error']!='']
        if len(bad): raise FlowersError(bad.iloc[0])
        return df['count'].to_numpy(np.float32)

    def __repr__(self): return f"Counter({type(self.model).__name__}, size={self.size}, method={self.method!r}, {self.precision} on {self.device})"

def _unpickler_for(fname):
    "A pickle module whose unpickler names the missing package instead of fastai's `UnboundLocalError`"
    class _Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            try: return super().find_class(module, name)
            except ImportError as e:
                pkg = (getattr(e, 'name', None) or module).split('.')[0]
                raise FlowersError(f"{fname}: this model needs the Python package '{pkg}' (module {module}), which is not installed here. "
                                   f"Install it (pip install {pkg}) or use the safe format (model.safetensors)") from None
    return types.SimpleNamespace(Unpickler=_Unpickler, load=pickle.load, __name__='pickle')

_warned = set()
def load_pkl(fname) -> Learner:
    "fastai's `load_learner` with clear errors for missing, truncated or foreign files and missing packages"
    fname = Path(fname)
    if not fname.is_file(): raise FlowersError(f"{fname}: model file not found")
    if fname not in _warned:
        warnings.warn(f"{fname}: loading a pickle, which can run code. Only load files you trust; "
                      f"the safe format ({fname.with_name('model.safetensors')}) loads without pickle.")
        _warned.add(fname)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='load_learner')
            learn = load_learner(fname, pickle_module=_unpickler_for(fname))
    except FlowersError: raise
    except Exception as e: raise FlowersError(f"{fname}: not a loadable model (truncated, corrupt or not a fastai export: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(learn, Learner): raise FlowersError(f"{fname}: holds a {type(learn).__name__}, not a fastai Learner")
    return learn

def load_counter(path, # A run folder, `model.safetensors`, `model.json` or an `export.pkl`
                 precision='auto', # 'auto' (bf16 where the CPU supports it, fp16 on CUDA), 'fp32', 'bf16' or 'fp16'
                 device=None, # Default: CUDA if available, else the CPU
                ) -> Counter:
    "A `Counter` from a trained model; a run folder loads its safe format when present"
    path = Path(path)
    if path.is_dir(): path = path/'model.safetensors' if (path/'model.safetensors').is_file() else path/'export.pkl'
    if path.suffix in ('.safetensors','.json'):
        model,meta,cal = load_safe(path)
        return Counter.from_spec(model, meta, meta=meta, precision=precision, device=device, calibration=cal)
    return Counter.from_learner(load_pkl(path), precision=precision, device=device)

def check_csv_out(out) -> Path:
    "Raise unless a CSV can be written to `out`: checked before counting, so no result is lost at the end"
    out = Path(out)
    if out.is_dir(): raise FlowersError(f"--out {out}: is a folder; give a file name such as {out/'counts.csv'}")
    if not out.parent.is_dir(): raise FlowersError(f"--out {out}: folder {out.parent} does not exist; create it first")
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)): raise FlowersError(f"--out {out}: not writable")
    return out

def take_shard(items:list, # Images in a stable order (as `find_images` gives them)
               shard:str, # 'K/N': the K-th of N parts, K counted from 0 (as Slurm array and Kubernetes job indexes are)
              ) -> list:
    "Every N-th item from the K-th on: N jobs given K = 0..N-1 count every item exactly once"
    try: k,n = map(int, str(shard).split('/'))
    except ValueError: k = n = None
    if n is None or not 0 <= k < n: raise FlowersError(f"--shard {shard}: must be K/N with 0 <= K < N, e.g. 0/4 .. 3/4 for four jobs")
    return items[k::n]

def find_images(inputs) -> tuple:
    "Image paths from files, folders (searched recursively) and CSVs with an image column; and usage errors"
    items,errors = [],[]
    for inp in map(Path, inputs):
        if inp.is_dir(): items += sorted(p for p in inp.rglob('*') if p.suffix.lower() in IMG_EXTS and p.is_file())
        elif inp.suffix.lower()=='.csv' and inp.is_file():
            df = _read_csv(inp)
            col = 'image' if 'image' in df.columns else df.columns[0]
            root = find_img_dir(inp, df[col])
            items += [root/f for f in df[col]]
        elif inp.exists(): items.append(inp) # a pipe or device too: its row then says it is not a regular file
        else: errors.append(f"{inp}: no such file or folder")
    return items,errors

def predict_table(counter, # A `Counter`
                  items, # Images: paths, or anything `Counter.predict` takes
                  bs=64, # Batch size
                  names=None, # How to name each item (default: the item itself)
                  show_progress=True, # Progress bar for more than one batch
                  level=None, # Add `low`,`high` columns: an interval holding the true count with this probability (e.g. 0.9)
                  tile=None, # Count each image in windows of `tile` pixels at the training scale (`Counter.predict`)
                  maps=None, # Folder to write each image's count map picture into, as NAME.png
                 ) -> pd.DataFrame:
    "A row per image, in order: image, count (and interval), whether it is unusual and why, and the error for images that couldn't be read"
    check_int('--bs', bs)
    cal = counter.calibration
    if level is not None: counter._calibration().quantile(level) # a bad level fails before any image is decoded
    names = [str(o) for o in (names or items)]
    counts,feats,errors = np.full(len(items), np.nan),{},['']*len(items)
    with ThreadPoolExecutor(decode_threads()) as ex:
        decode = lambda i: [ex.submit(counter._tensor_or_error, items[j], names[j]) for j in range(i, min(i+bs, len(items)))]
        ahead = decode(0) if len(items) else []
        for i in progress(range(0, len(items), bs), show=show_progress and len(items)>bs):
            batch,ahead = ahead,(decode(i+bs) if i+bs < len(items) else []) # the next batch decodes while this one is counted
            idx,xs = [],[]
            for j,f in enumerate(batch, i):
                x = f.result()
                if isinstance(x, FlowersError): errors[j] = str(x)
                else: xs.append(x); idx.append(j)
            if xs: counts[idx],f = counter._forward(xs, feats=True); feats.update(zip(idx, f))
    if tile or maps:
        for j in progress(range(len(items)), show=show_progress and len(items)>1):
            if not errors[j]: counts[j] = _tile_or_map(counter, items[j], names[j], tile, maps, j)
    df = pd.DataFrame({'image': names, 'count': counts})
    if level is not None: df['low'],df['high'] = cal.interval(counts, level)
    if cal is not None:
        ok = sorted(feats)
        flags,notes = cal.unusual(np.stack([feats[j] for j in ok]), counts[ok]) if ok else ([],[])
        df['unusual'],df['note'] = False,''
        df.loc[ok, 'unusual'],df.loc[ok, 'note'] = flags,notes
    df['error'] = errors
    return df

def _tile_or_map(counter, item, name, tile, maps, j):
    "The count of `item` by windows (`tile`), its count map picture written into `maps`"
    from .report import save_count_map # matplotlib only when pictures are asked for
    if not maps: return counter.predict(item, tile=tile)
    cmap = counter.count_map(item, tile=tile)
    save_count_map(open_image(item, name), cmap, Path(maps)/f'{j:05d}-{Path(name).stem[:80]}.png', f'{Path(name).name}: {cmap.sum():.1f}')
    return float(cmap.sum())

if __name__=='__main__': sys.argv[0] = 'python -m flowers.predict' # the usage line argparse prints

@call_parse
def main(model:str, # Run folder, model.safetensors or export.pkl
         *inputs:str, # Image files, folders (searched recursively) or CSVs with an image column
         out:str=None, # Write the table to this CSV instead of printing it
         bs:int=64, # Batch size
         fp32:bool=False, # Full fp32 precision (bf16 is used where the CPU supports it, within 0.05 heads of fp32)
         shard:str=None, # K/N: count only every N-th image from the K-th (K = 0..N-1), for job arrays; the N parts make the whole table
         interval:float=None, # Add low,high columns: an interval holding the true count with this probability, e.g. 0.9
         tile:int=None, # For images larger than the training images: count windows of PX pixels at the training scale, with no upper limit
         maps:str=None, # Write a picture of each image with its count map (where it counted) into this folder
        ):
    "Count things in images with a trained model"
    with user_errors():
        if not inputs: raise FlowersError("give at least one image, folder or CSV to count")
        check_int('--bs', bs)
        if out: check_csv_out(out)
        if shard: take_shard([], shard)
        items,missing = find_images(inputs)
        if missing: raise FlowersError('; '.join(missing))
        if not items: raise FlowersError(f"no images found in {', '.join(inputs)} (looked for {', '.join(IMG_EXTS)})")
        if shard: items = take_shard(items, shard) # may be empty: more jobs than images still gives every job its (empty) part
        counter = load_counter(model, precision='fp32' if fp32 else 'auto')
        if tile is not None: check_int('--tile', tile, MIN_SIZE)
        if maps: Path(maps).mkdir(parents=True, exist_ok=True); counter._cells(torch.zeros(3, counter.size, counter.size, dtype=torch.uint8))
        df = predict_table(counter, items, bs=bs, level=interval, tile=tile, maps=maps)
        if out: df.to_csv(out, index=False); print(f'Wrote {len(df)} rows to {out}')
        else: print(df.to_string(index=False, float_format=lambda v: f'{v:.2f}'))
        n_bad = int((df['error']!='').sum())
        if n_bad: print(f'{n_bad} of {len(df)} images could not be read', file=sys.stderr)
        n_odd = int(df['unusual'].sum()) if 'unusual' in df else 0
        if n_odd: print(f'{n_odd} of {len(df)} images flagged as unusual (see the note column): their counts may be meaningless', file=sys.stderr)
    if n_bad: sys.exit(1)
