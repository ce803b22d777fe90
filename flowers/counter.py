"""A trained model as a counter: `Counter` (counts, maps, intervals, unusual images) and `load_counter` from either format."""
import pickle, types, warnings, numpy as np
from pathlib import Path
from fastai.vision.all import *
from .errors import FlowersError, check_int, check_tile, first_line
from .safe import load_safe, input_spec
from .images import open_image, image_size, fit_size
from .settings import MIN_SIZE, model_file
from .density import CountMapHead, map_stride
from .stitch import fine_step, spread_cells, shifted, stitch, sharpen
from .calibrate import fingerprint
from .precision import auto_precision, check_precision
from . import memory

WINDOW = 1.4 # training images a side in each window of counting by tiles: a training image's area counted, about two cells of ground around it

__all__ = ['Counter', 'load_counter', 'load_pkl']

def _on(norm, device):
    "`norm` with its mean and std on `device`"
    norm.mean,norm.std = norm.mean.to(device),norm.std.to(device)
    return norm

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
        # the `Learner` shares the model, and its `predict` moves it to its data's device: on a GPU, counting after `learn.predict` failed
        if learn is not None: learn.dls.device = self.device
        self.stride = map_stride(self.model) if isinstance(self.model[1], CountMapHead) else None # input pixels per map cell
        self.fmt = fmt
        self.resize = Resize(size, method=method, pad_mode=PadMode.Zeros)
        self.norm = noop if stats is None else _on(Normalize.from_stats(*stats, cuda=False), self.device) # fastai's cuda=True: the first GPU's
        self._image_bytes = None # what one image's layers output: measured when a batch of more is asked for

    def bs_in_memory(self, bs:int) -> int:
        "`bs`, or fewer where counting that many at once would not fit in memory: the kernel would kill the process, and every count be lost"
        if bs < 2: return bs
        if self._image_bytes is None: self._image_bytes = memory.layer_bytes(self.model, self.size)
        return memory.bs_in_memory(bs, self._image_bytes, memory.free_memory(self.device))

    @classmethod
    def from_spec(cls, model, spec, **kwargs):
        "A `Counter` for `model` fed as `spec` says (`input_spec`, or `model.json`)"
        norm = spec.get('normalize')
        return cls(model, spec['size'], spec['method'], (norm['mean'], norm['std']) if norm else None, **kwargs)

    @classmethod
    def from_learner(cls, learn, **kwargs):
        "A `Counter` using `learn`'s model, resizing and normalisation"
        return cls.from_spec(learn.model, input_spec(learn), learn=learn, **kwargs)

    @property
    def train_info(self) -> dict:
        "What its run recorded of its training (`epochs`, `schedule_epochs`, `undertrained`); {} for a model exported before it was"
        t = (self.meta or {}).get('train_info', getattr(self.learn, 'train_info', None))
        return t if isinstance(t, dict) else {}

    @property
    def label_col(self) -> str:
        "The CSV column of counts the model was trained on: `model.json`'s, else its `Learner`'s `ColReader`, else 'count'"
        if 'label_col' in (self.meta or {}): return self.meta['label_col']
        try: r = first(self.learn.dls.valid.tls[1].tfms.fs.filter(risinstance(ColReader)))
        except (AttributeError, IndexError): r = None # a `Learner` built some other way
        return r.cols[0] if r is not None and len(r.cols)==1 and isinstance(r.cols[0], str) else 'count'

    def _tensor_and_size(self, img, name=None):
        "One image (path, PIL image, array or bytes) as a resized uint8 tensor, decoded at the size needed; and its (width, height) as given"
        pil = open_image(img, name, size=self.size)
        # a file is decoded, and reduced, to a few times the model's input: its header says how large it is (a file object's can't be read twice)
        return image2tensor(self.resize(pil, split_idx=1)),(image_size(img) if isinstance(img, (str, Path, bytes, bytearray, memoryview)) else pil.size)

    def _tensor(self, img, name=None): return self._tensor_and_size(img, name)[0]

    def _tensor_or_error(self, img, name=None):
        try: return self._tensor_and_size(img, name)
        except FlowersError as e: return e

    def _input(self, xs):
        "A batch from a list of uint8 tensors of one size: scaled to 0..1, and normalised as the network takes it"
        x01 = torch.stack(xs).to(self.device).float()/255.
        return x01,self.norm(TensorImage(x01)).as_subclass(Tensor).contiguous(memory_format=self.fmt)

    def _dtype(self): return dict(bf16=torch.bfloat16, fp16=torch.float16).get(self.precision)

    def _forward(self, xs, feats=False):
        "Counts for a list of uint8 tensors; with `feats`, also their `fingerprint` features"
        with torch.inference_mode():
            counts,f,_ = fingerprint(self.model, *self._input(xs), dtype=self._dtype(), features=feats)
            return (counts.cpu().numpy(), f.cpu().numpy()) if feats else counts.cpu().numpy()

    def _need_map(self):
        "Raise unless the model makes a count map (fastai's pooled head makes none)"
        if not isinstance(self.model[1], CountMapHead):
            raise FlowersError("this model has fastai's pooled head (--head pool), which makes no count map; train with --head map")

    def _density(self, xs, feats=False):
        "The count map's cells, (n, h, w), for a list of uint8 tensors of one size; with `feats`, also their `fingerprint` features"
        self._need_map()
        with torch.inference_mode():
            cells,f,_ = fingerprint(self.model, *self._input(xs), dtype=self._dtype(), features=feats, cells=True)
            return (cells.float().cpu(), f.cpu().numpy()) if feats else cells.float().cpu()

    def _cells(self, x): return self._density([x])[0]

    def _fine(self, x, cells):
        "A map of `x` with a cell every `fine_step` pixels (the model run on shifted copies, stitched, sharpened), summing as `cells`"
        st,g = self.stride,fine_step(self.stride)
        d = sharpen(stitch(self._density(shifted(x, st, g)), *x.shape[-2:], st, g), st, g)
        return d*(cells.sum()/d.sum().clamp_min(1e-12))

    def _window_cells(self, wins, bs=16, feats=False):
        "The count map's cells of each of `wins`, those of one size `bs` at a time (one window a call took 3x as long); and their features or None"
        cells,fs,by_shape = [None]*len(wins),[None]*len(wins),{}
        for i,win in enumerate(wins): by_shape.setdefault(tuple(win.shape), []).append(i)
        for idx in by_shape.values():
            for k in range(0, len(idx), bs):
                part = idx[k:k+bs]
                d,f = self._density([wins[i] for i in part], feats=True) if feats else (self._density([wins[i] for i in part]), [None]*len(part))
                for i,di,fi in zip(part, d, f): cells[i],fs[i] = di,fi
        return cells,(np.stack(fs) if feats else None)

    @property
    def train_side(self) -> float:
        "Pixels of a training image per model input side, their median: their scale, which `tile='auto'` counts at; None if not recorded"
        return getattr(self.calibration, 'side', None) # calibrations made before it was recorded have none

    def tile_px(self, tile) -> int:
        "`tile` checked, as pixels of an image per model input; 'auto' is the training images' median side: counted at their scale"
        tile = check_tile(tile, MIN_SIZE)
        if tile!='auto': return tile
        if self.train_side is None:
            raise FlowersError("--tile auto: this model does not record its training images' size (trained before it was, or without "
                               "a calibration); give --tile PX, the pixels a side of a training image had")
        return max(MIN_SIZE, round(self.train_side))

    def _tiled_cells(self, img, tile, fine=False, feats=False):
        "Cells of the count map of `img` at the training scale (`tile` of its pixels per model input), window by window; its size; the windows' features (with `feats`, else None) and counts for a training image's area"
        tile = self.tile_px(tile)
        st = self.stride
        g = fine_step(st) if fine else st
        pil = open_image(img)
        w,h = [max(st, round(v*self.size/tile/st)*st) for v in pil.size]
        memory.check_scaled(pil.size, (w, h), tile, memory.free_memory('cpu')) # resized by PIL, on the CPU wherever the model is
        x = image2tensor(pil.resize((w,h), Image.BILINEAR))
        # each window counts its middle, `m` pixels in from its edges so that heads there are whole, and is `WINDOW` training images a side:
        # windows as large as one lost heads across the seams of mosaics (12 fresh 4 x 4 mosaics: 6.2% off on average against 3.2%,
        # 9 of 12 within 10% against 12); with the IBN blocks, windows of 1.4 lost fewer than windows of 2 (24 mosaics: 19 within 10%
        # against 16; an empty one 6.7 heads against 9.5; wide fields too; README, Predict), and take 1.2 to 1.7 times as long; with the
        # stem of 3, 1.4 again beat 1, 2 and 2.5 (22 of 24 against 15, 19 and 19; the fewest heads on empty mosaics)
        m = min(2, (self.size//st - 1)//2)*st # two cells, fewer where training images are only a few cells wide
        side = int(WINDOW*self.size)//st*st
        # what fits one window is counted whole, as a training image is: windows showing parts of it each added some
        # of the count of empty ground (fields of 128 px counted with tile=128 in 4 windows: MAE 1.57, bias +1.25; whole 1.09);
        # so is each side that fits one, a long strip in one row of windows
        cy,cx = [v if v <= side else side - 2*m for v in (h, w)]
        out = torch.zeros(h//g, w//g)
        # a window at the far edge is moved back inside, not cut short: each window shows as much around what it counts
        spots = [(y0, x0, min(max(0, y0-m), max(0, h-side)), min(max(0, x0-m), max(0, w-side))) for y0 in range(0, h, cy) for x0 in range(0, w, cx)]
        wins = [x[:, wy:wy+side, wx:wx+side] for y0,x0,wy,wx in spots]
        cells,fs = self._window_cells(wins, feats=feats)
        for (y0,x0,wy,wx),win,d in zip(spots, wins, cells):
            y1,x1 = min(y0+cy, h),min(x0+cx, w)
            c = d[(y0-wy)//st:(y1-wy)//st, (x0-wx)//st:(x1-wx)//st]
            if fine: # the window's fine cells, holding what its plain ones count
                d = self._fine(win, d)[(y0-wy)//g:(y1-wy)//g, (x0-wx)//g:(x1-wx)//g]
                c = d*(c.sum()/d.sum().clamp_min(1e-12))
            out[y0//g:y1//g, x0//g:x1//g] = c
        # a window larger than a training image may hold more heads than any: its count is judged for a training image's area
        return out,pil.size,fs,np.array([float(d.sum())*min(1, self.size**2/(win.shape[-1]*win.shape[-2])) for win,d in zip(wins, cells)])

    def count_map(self, img, # A path, `PIL.Image`, numpy array or raw bytes
                  tile=None, # Count at the training scale in windows: `tile` pixels of `img` per model input, or 'auto' (see `predict`)
                  max_side=None, # Make the map at most this many pixels a side, in the image's shape (to show it small); same sum
                  fine=True, # A cell every quarter of a map cell (`fine_step`), from the model run on 16 shifted copies (16x the work), instead of every cell
                 ) -> np.ndarray:
        "Where it counted: an H x W float32 map of `img` as opened (EXIF applied), >= 0, summing to `predict(img, tile)`"
        if max_side is not None: check_int('max_side', max_side) # 0 gave a full-size map, -1 one of a single pixel
        if tile is not None: cells,(w,h),*_ = self._tiled_cells(img, tile, fine)
        else:
            if callable(getattr(img, 'read', None)): img = img.read() # a stream is read once, for its size and its pixels
            x = self._tensor(img)
            (w,h),cells = image_size(img),self._cells(x)
            if fine: cells = self._fine(x, cells)
        if max_side and max(w,h) > max_side: w,h = fit_size((w,h), max_side)
        return spread_cells(cells, w, h, pad=self.method=='pad' and tile is None)

    def show_count_map(self, img, # A path, `PIL.Image`, numpy array or raw bytes
                       tile=None, # Count in windows, as `predict`
                       ax=None, # Axes to draw on (default: a new figure)
                       **kwargs, # Passed to `flowers.report.show_count_map`: `title`, `alpha`
                      ):
        "Where it counted, to look at: the image with its count map over it, titled with the count; returns the axes"
        from .report import show_count_map, PICTURE_SIDE # matplotlib only when a picture is asked for
        if callable(getattr(img, 'read', None)): img = img.read() # a stream is read once, for the photo and its map
        return show_count_map(open_image(img), self.count_map(img, tile=tile, max_side=PICTURE_SIDE), ax=ax, **kwargs)

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

    def is_unusual(self, img, # A path, `PIL.Image`, numpy array or raw bytes
                   tile=None, # Judge it as counted in windows (`predict(img, tile)`): by its windows, each against the training images
                  ) -> bool:
        "Does `img` look unlike every training image (its features are far from theirs), or have more heads than any?"
        if tile is not None:
            _,_,feats,counts = self._tiled_cells(img, tile, feats=True)
            return self._calibration().unusual_windows(feats, counts)[0]
        x,size = self._tensor_and_size(img)
        counts,feats = self._forward([x], feats=True)
        return bool(self._calibration().unusual(feats, counts, [size])[0][0])

    def predict(self, img, # A path, `PIL.Image`, numpy array or raw bytes
                tile=None, # For images larger than the training images: `tile` pixels of `img` per model input, counted window by window; 'auto': the training images' median side
               ) -> float:
        "The count in one image; with `tile`, without the training counts' range as a limit"
        if tile is not None: return float(self._tiled_cells(img, tile)[0].sum())
        return float(self._forward([self._tensor(img)])[0])

    def predict_batch(self, items, # Images: paths, `PIL.Image`s, arrays or bytes
                      bs=64, # Batch size
                      tile=None, # Count each image in windows of `tile` of its pixels (or 'auto'), as `predict`
                     ) -> np.ndarray:
        "Counts for many images, `bs` at a time; raises naming the first unreadable image"
        if isinstance(items, (str, Path, bytes, bytearray, memoryview, Image.Image)) or (isinstance(items, np.ndarray) and items.ndim!=4):
            # a path is iterable too: its characters would each be "counted"
            raise FlowersError(f"predict_batch takes a list of images, not one {type(items).__name__}; use predict(img) or predict_batch([img])")
        from .predict import predict_table # the table's decoding threads and error rows, which import this module
        df = predict_table(self, list(items), bs=bs, show_progress=False, unusual=False, tile=tile)
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
    model_file(fname)
    if fname not in _warned:
        safe = fname.with_name('model.safetensors')
        # a `learn.export()` from a REPL has no safe format beside it: say how to make one, not where it isn't
        other = (f"the safe format ({safe}) loads without pickle" if safe.is_file() else
                 "`flowers.safe.save_safe(learn, folder, arch)` writes a safe format, which loads without pickle")
        warnings.warn(f"{fname}: loading a pickle, which can run code. Only load files you trust; {other}.")
        _warned.add(fname)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='load_learner')
            learn = load_learner(fname, pickle_module=_unpickler_for(fname))
    except FlowersError: raise
    except Exception as e: raise FlowersError(f"{fname}: not a loadable model (truncated, corrupt or not a fastai export: {first_line(e)})") from None
    if not isinstance(learn, Learner): raise FlowersError(f"{fname}: holds a {type(learn).__name__}, not a fastai Learner")
    return learn

def load_counter(path, # A run folder, `model.safetensors`, `model.json` or an `export.pkl`
                 precision='auto', # 'auto' (bf16 where the CPU supports it, fp16 on CUDA), 'fp32', 'bf16' or 'fp16'
                 device=None, # Default: CUDA if available, else the CPU
                ) -> Counter:
    "A `Counter` from a trained model; a run folder loads its safe format when present"
    path = model_file(path)
    if path.suffix in ('.safetensors','.json'):
        model,meta,cal = load_safe(path)
        return Counter.from_spec(model, meta, meta=meta, precision=precision, device=device, calibration=cal)
    return Counter.from_learner(load_pkl(path), precision=precision, device=device)
