"""A counts CSV, checked (`flowers.counts`), as fastai `DataLoaders`; and the default synthetic data set."""
import math, os, shutil, warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from fastai.vision.all import *
from .errors import FlowersDataError
from .images import OpenImage
from .settings import check_method, decode_threads
from .progress import progress
from .atomic import locked
from .density import pad_points, drop_points
from .distributed import local_procs
from .augment import * # also where export.pkl files from before the split find RotateFit
from .counts import * # here too, where code written before the split finds it
from . import show # fastai's show_results and plot_top_losses for counts, wherever a counting `dls` is

__all__ = ['FlowersDataError', 'IMG_EXTS', 'DATA_DIR', 'data_dir', 'read_counts', 'find_img_dir', 'CountDataLoaders', 'rotate_fit_mat', 'RotateFit', 'RandomBlur', 'RandomNoise',
           'count_tfms', 'read_heads', 'read_points', 'check_method', 'CachedDL', 'cache_fits', 'count_block', 'count_dls', 'default_data']

DATA_DIR = Path(__file__).resolve().parents[1]/'data' # `data/` of a source checkout, which holds its README.md

def data_dir() -> Path:
    "Where the default data set goes: `data/` of a source checkout, else fastai's data folder (`~/.fastai/data`, or `$FASTAI_HOME/data`)"
    if (DATA_DIR/'README.md').is_file(): return DATA_DIR
    # installed from a wheel, `DATA_DIR` is site-packages/data: no place for 2,000 images, and not writable in a system Python
    from fastai.data.external import fastai_path
    return fastai_path('data')

class CachedDL(TfmdDL):
    "A `TfmdDL` keeping each item after its item transforms: an image is decoded and resized once per run, not every epoch"
    def __init__(self, dataset=None, # Map-style dataset
                 cache:bool=True, # Keep items; only for deterministic item transforms (`count_block`'s Resize is)
                 **kwargs):
        super().__init__(dataset, **kwargs)
        self.cache = {} if cache else None

    def do_item(self, s):
        if self.cache is None or s is None: return super().do_item(s)
        cache = self.cache # a thread left running by an earlier, unfinished pass must not write into a cache swapped in since
        if s not in cache: cache[s] = super().do_item(s)
        return cache[s]

    def create_batches(self, samps):
        "fastai's batches, with the images not yet cached decoded ahead in threads while the model trains"
        if self.cache is None or len(self.cache)==len(self.dataset) or self.fake_l.num_workers:
            yield from super().create_batches(samps); return
        if self.dataset is not None: self.it = iter(self.dataset)
        ex = ThreadPoolExecutor(decode_threads())
        try: yield from map(self.do_batch, self.chunkify(o for o in ex.map(self.do_item, samps) if o is not None))
        finally: ex.shutdown(wait=False, cancel_futures=True) # lr_find and a `next(iter(dl))` leave mid-epoch: don't decode the rest

    def new(self, dataset=None, cls=None, **kwargs):
        # copies (`test_dl`, the exported `Learner`'s) see their items once, or never: no cache unless asked
        return super().new(dataset, cls, **merge(dict(cache=False), kwargs))

    def fill(self, comment='decoding images once'):
        "Load every item not yet kept now, e.g. before worker processes start (each would otherwise fill its own copy)"
        if self.cache is None: return
        todo = [i for i in range(len(self.dataset)) if i not in self.cache]
        if not todo: return
        with ThreadPoolExecutor(decode_threads()) as ex: # Pillow decodes without the GIL
            self.cache.update(zip(todo, progress(ex.map(super().do_item, todo), total=len(todo), comment=comment)))

class CountDataLoaders(DataLoaders):
    "fastai's `DataLoaders`, whose empty copy (what `learn.export` keeps) decodes (image, count): a plain export then predicts"
    def new_empty(self): return drop_points(super().new_empty(), keep=False)

def cache_fits(n, # Number of images
               size, # Their size after resizing
               share=0.25, # Most of the physical memory the caches of this machine's training processes may take together
              ) -> bool:
    "Do `n` decoded `size` x `size` RGB images fit in this process's part of `share` of this machine's memory?"
    try: mem = os.sysconf('SC_PHYS_PAGES')*os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError): return False
    # each data-parallel process decodes every image (its shard changes each epoch): 4 of them each allowed a quarter would take all of it
    return n*size*size*3 <= share*mem/local_procs()

def _aug_tfms(aug):
    "`count_tfms` for `aug`: True (the defaults), False or None (none), or a dict of its arguments"
    if isinstance(aug, dict): return count_tfms(**aug)
    return count_tfms() if aug else None

def count_block(img_dir, # Folder the image names are relative to
                fn_col='image', # Column holding image file names
                label_col='count', # Column holding the counts
                size=128, # Images are resized to `size` x `size`
                method='squish', # How to fit other aspect ratios: 'squish' or 'pad' (zeros); never crop, which cuts heads off
                valid_pct=0.2, # Share of images held out for validation (ignored with `valid_col`)
                seed=42, # Random seed for the split
                valid_col=None, # Boolean column marking validation rows, instead of a random split
                aug=True, # Apply `count_tfms` to training batches; a dict sets its arguments
                points_col=None, # Column of head centres (-1..1, from `read_heads`): (image, count, points) items
                rims_col=None, # Column of a point on each head's rim (`read_heads`), with `points_col`: (image, count, points, rims) items
               ) -> DataBlock:
    "A `DataBlock` from a counts `DataFrame` to (image, count) pairs, or (image, count, points) triples, or with rims too"
    check_method(method)
    # decoded at the size needed, as `Counter` does: train and predict see the same pixels
    blocks = [TransformBlock(type_tfms=OpenImage(size), batch_tfms=IntToFloatTensor), RegressionBlock(n_out=1)]
    getters = [ColReader(fn_col, pref=Path(img_dir)), ColReader(label_col)]
    for col in filter(None, [points_col, points_col and rims_col]): # already in -1..1: Resize and the augmentation move them with the image
        blocks.append(TransformBlock(type_tfms=TensorPoint.create, item_tfms=PointScaler(do_scale=False)))
        getters.append(ColReader(col))
    return DataBlock(blocks=blocks, getters=getters, n_inp=1,
                     splitter=ColSplitter(valid_col) if valid_col else RandomSplitter(valid_pct, seed=seed),
                     item_tfms=Resize(size, method=method, pad_mode=PadMode.Zeros),
                     # normalised here, not by the learner: a loaded model given new `dls` (`learn.dls = count_dls(...)`, to fine-tune
                     # or validate) saw raw pixels and counted 4 heads off where it had been 0.8 off
                     batch_tfms=[*L(_aug_tfms(aug)), Normalize.from_stats(*imagenet_stats)], dl_type=CachedDL)

def _fit_bs(bs, sizes, csv, valid_col, valid_pct=None) -> int:
    "`bs`, capped to the training set of `sizes` (train, valid): fastai drops a partial last batch, so a larger `bs` trains on nothing"
    how = "its is_valid column" if valid_col else "--valid-pct (valid_pct=)"
    n_train,n_valid = sizes
    if not n_valid and valid_col:
        raise FlowersDataError(f"{csv}: no validation images (set by {how}); a model can't be checked without them. Mark some rows is_valid=true")
    if not n_valid and n_train < 2:
        raise FlowersDataError(f"{csv}: only {n_train} image; a model needs at least 2, one to train on and one to check it with")
    if not n_valid: # fastai's `RandomSplitter` rounds down: 0.2 of 4 images is none, and "use a --valid-pct between 0 and 1" said nothing of it
        raise FlowersDataError(f"{csv}: no validation images (set by {how}): --valid-pct {valid_pct:g} of its {n_train} images is less than one, "
                               f"and a model can't be checked without them. Give --valid-pct {math.ceil(100/n_train)/100:g} or more (one image), or more images")
    if not n_train: raise FlowersDataError(f"{csv}: no training images (set by {how}); mark some rows is_valid=false")
    if bs > n_train:
        warnings.warn(f"batch size {bs} is more than the {n_train} training images; using bs={n_train}")
        bs = n_train
    return bs

def count_dls(csv, # CSV file with one row per image, or a folder holding `counts.csv`
              img_dir=None, # Folder the image names are relative to (default: `images/` beside the CSV, else the CSV's folder)
              fn_col='image', # Column holding image file names
              label_col='count', # Column holding the counts
              size=128, # Images are resized to `size` x `size`
              bs=32, # Batch size
              valid_pct=0.2, # Share of images held out for validation (unless the CSV has an `is_valid` column)
              seed=42, # Random seed for the split and the shuffling
              method='squish', # 'squish' or 'pad'
              drop_bad=False, # Drop bad rows with a warning instead of raising
              verify=True, # Open every image once before building the `DataLoaders`
              aug=True, # Count-preserving augmentation of training batches (`count_tfms`; a dict sets its arguments)
              num_workers=0, # Data-loading processes
              cache=True, # Decode and resize each image once per run, if they fit in a quarter of the memory (shared by this machine's training processes)
              points=True, # Also read head centres (and radii) from `points.csv` beside the CSV, if there is one (`read_heads`)
              **kwargs, # Passed to `DataBlock.dataloaders`
             ) -> DataLoaders:
    "`DataLoaders` of (image, count) batches from a counts CSV, with each image's head centres (and rims) when `points.csv` has them"
    df = read_counts(csv, img_dir, fn_col, label_col, drop_bad=drop_bad, verify=verify, size=size)
    valid_col = 'is_valid' if 'is_valid' in df.columns else None
    pts,rims = read_heads(df, fn_col, label_col) if points else (None,None)
    if pts is not None: df['_points'] = pts
    if rims is not None: df['_rims'] = rims
    dblock = count_block(df.attrs['img_dir'], fn_col, label_col, size=size, method=method, valid_pct=valid_pct, seed=seed, valid_col=valid_col,
                         aug=aug, points_col='_points' if pts is not None else None, rims_col='_rims' if rims is not None else None)
    set_seed(seed) # the shuffling order, too, follows the seed
    bs = _fit_bs(bs, [len(o) for o in dblock.splitter(df)], df.attrs['csv'], valid_col, valid_pct) # the splitters are seeded: the same split again
    dsets = dblock.datasets(df)
    cache = cache and cache_fits(len(df), size)
    if pts is not None: kwargs['before_batch'] = pad_points
    if num_workers > num_cpus(): # each epoch starts them all anew: 500 on 2 cores took 39 s for an epoch of 240 images
        warnings.warn(f"--workers {num_workers}: this machine has {num_cpus()} cores; using {num_cpus()} data-loading processes")
        num_workers = num_cpus()
    dls = dsets.dataloaders(bs=bs, num_workers=num_workers, cache=cache, after_item=dblock.item_tfms, after_batch=dblock.batch_tfms, **kwargs)
    dls = CountDataLoaders(*dls.loaders, path=dls.path, device=dls.device)
    if cache and num_workers:
        for dl in dls: dl.fill()
    # kept for `PointSupervision`, which shows them to its own fits: any other learner, fastai's plain `vision_learner` too, sees (image, count)
    if pts is not None: drop_points(dls)
    dls.df = df
    return dls

def default_data(n:int=2000, # Number of images to generate if absent
                 size:int=128, # Their typical size in pixels
                 max_count:int=20, # Largest count
                 seed:int=0, # Generation seed
                 path=None, # Where the data set lives (default `data/flowers` in a source checkout, else fastai's data folder)
                ) -> Path:
    "CSV of the default synthetic data set, generated first if absent or made by another generator version"
    path = Path(path or data_dir()/'flowers')
    # two first runs at once: the second waits, then finds the set drawn, instead of deleting images the first is training on
    with locked(path/'.lock', f"Another process is drawing the default data set at {path}: waiting for it"): return _draw_default(path, n, size, max_count, seed)

def _draw_default(path, n, size, max_count, seed) -> Path:
    "The work of `default_data`, under its lock"
    from .synth import make_flowers, read_stamp, is_current, SYNTH_VERSION, STAMP
    csv = path/'counts.csv'
    if is_current(path, n=n, size=size, max_count=max_count, seed=seed): return csv
    if csv.is_file():
        stamp = read_stamp(path)
        print(f"Default data set at {path} was made by {'generator version '+str(stamp['version']) if stamp.get('version') else 'an older generator'}"
              f" or other settings ({STAMP}); regenerating it with version {SYNTH_VERSION}")
        shutil.rmtree(path/'images', ignore_errors=True) # ours, git-ignored: no stale images may stay behind
    else: print(f"Default data set not found at {path}: generating {n} synthetic flower fields (about {size} px, counts 0..{max_count})")
    make_flowers(path, n=n, size=size, max_count=max_count, seed=seed, replace=True) # ours: its stale images were removed above
    return csv
