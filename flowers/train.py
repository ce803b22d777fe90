"""Train a counting model: `python -m flowers.train` (see `--help`)."""
import contextlib, json, os, sys, time, warnings
from pathlib import Path
from fastai.vision.all import *
from fastcore.script import call_parse
from .errors import FlowersError, user_errors
from .data import count_dls, default_data, check_method
from .learner import count_learner, resolve_pretrained, get_arch, check_loss
from .report import write_report, versions
from .safe import save_safe
from .progress import plain_progress

__all__ = ['DEFAULT_LR', 'History', 'find_csv', 'find_lr', 'fit', 'train']

DEFAULT_LR = 2e-3 # used when the learning-rate finder gives no usable suggestion

def find_csv(data) -> Path:
    "The counts CSV for `data`: a CSV file, a folder holding `counts.csv`, or None for the default data set"
    if data is None: return default_data()
    data = Path(data)
    if data.is_dir():
        if (data/'counts.csv').is_file(): return data/'counts.csv'
        csvs = sorted(data.glob('*.csv'))
        if len(csvs)==1: return csvs[0]
        raise FlowersError(f"--data {data}: no counts.csv in this folder" + (f" (found {', '.join(c.name for c in csvs)}; pass one)" if csvs else ''))
    if not data.exists(): raise FlowersError(f"--data {data}: no such file or folder")
    return data

def find_lr(learn, fname=None) -> float:
    "The valley suggestion of `lr_find`, its plot saved to `fname`; `DEFAULT_LR` if the finder fails"
    try:
        with learn.removed_cbs(learn.progress) if hasattr(learn,'progress') else contextlib.nullcontext():
            lr = float(learn.lr_find(num_it=min(100, 3*len(learn.dls.train)+10), suggest_funcs=(valley,)).valley)
        if fname: plt.gcf().savefig(fname, dpi=100, bbox_inches='tight')
    except Exception as e: lr = float('nan'); print(f'lr_find failed ({e})')
    finally: plt.close('all')
    if not (1e-6 <= lr <= 1): # nan, or a suggestion no sane schedule would use
        print(f'lr_find gave no usable suggestion ({lr:g}); using lr={DEFAULT_LR:g}')
        lr = DEFAULT_LR
    return lr

class History(Callback):
    "Write the recorder's line of every epoch to `fname`, across several fits (`fine_tune` fits twice)"
    order = Recorder.order+1 # after the recorder has logged the epoch
    def __init__(self, fname): self.fname,self.rows = Path(fname),[]
    def after_epoch(self):
        row = dict(zip(self.recorder.metric_names, self.recorder.log))
        self.rows.append({'epoch': len(self.rows), 'frozen': self.opt.frozen_idx>0, **{k.lstrip('_'):v for k,v in row.items() if k!='epoch'}})
        pd.DataFrame(self.rows).to_csv(self.fname, index=False) # rewritten whole: no file is held open

def _is_main(): return rank_distrib()==0

def train(data=None, # Folder with counts.csv, or a CSV file (default: the synthetic data set, generated if absent)
          img_dir=None, # Folder the image names are relative to (default: images/ beside the CSV, else its folder)
          fn_col='image', # CSV column with image file names
          label_col='count', # CSV column with counts
          out=None, # Run folder for the model and reports (default: models/run-DATE-TIME)
          arch='resnet34', # torchvision ResNet: resnet18, resnet34, resnet50, resnet101 or resnet152
          size=64, # Images are resized to size x size
          bs=32, # Batch size
          epochs=14, # Epochs (unfrozen epochs when fine-tuning)
          freeze_epochs=1, # Epochs with the pretrained body frozen, before `epochs`
          lr=None, # Learning rate (default: lr_find's valley suggestion)
          valid_pct=0.2, # Share of images held out for validation (unless the CSV has an is_valid column)
          seed=42, # Random seed: the same seed gives the same split and metrics
          pretrained='auto', # ImageNet weights: auto (if available), yes (required) or no
          weights=None, # A local torchvision state dict for the body, instead of ImageNet weights
          loss='mse', # Loss: mse, l1 or huber
          workers=0, # Data-loading processes
          drop_bad=False, # Skip bad CSV rows (listed) instead of stopping
          method='squish', # How images are made square: squish or pad
         ) -> Learner:
    "Train a ResNet to count, export it and write reports to `out`; returns the `Learner`"
    t0 = time.time()
    get_arch(arch), check_loss(loss), check_method(method) # flag errors before any slow work
    with plain_progress():
        csv = find_csv(data)
        out = Path(out or Path('models')/time.strftime('run-%Y%m%d-%H%M%S'))
        if _is_main(): out.mkdir(parents=True, exist_ok=True)
        set_seed(seed, reproducible=True)
        dls = count_dls(csv, img_dir, fn_col, label_col, size=size, bs=bs, valid_pct=valid_pct, seed=seed, method=method,
                        drop_bad=drop_bad, num_workers=workers)
        use_pre = weights is None and resolve_pretrained(arch, pretrained)
        learn = count_learner(dls, arch, pretrained=use_pre, weights=weights, loss=loss, path=out, model_dir='.')
        recipe = 'fine_tune' if (use_pre or weights is not None) else 'fit_one_cycle'
        if lr is None: lr = find_lr(learn, out/'lr_find.png' if _is_main() else None)
        start = f'local weights {weights}' if weights else 'ImageNet weights' if use_pre else 'random init'
        print(f'Training {arch} from {start} with {recipe}: {epochs} epochs, lr={lr:.2g}, {size}px, '
              f'{len(dls.train_ds)} train / {len(dls.valid_ds)} valid images')
        fit(learn, recipe, epochs, lr, freeze_epochs, cbs=[History(out/'history.csv')] if _is_main() else [])
    if not _is_main(): return learn
    learn.export('export.pkl')
    save_safe(learn, out, arch, fn_col=fn_col, label_col=label_col, versions=versions())
    info = dict(lr=lr, epochs=epochs, freeze_epochs=freeze_epochs if recipe=='fine_tune' else 0, arch=arch, size=size,
                bs=bs, loss=loss, seed=seed, recipe=recipe, pretrained=bool(use_pre), weights=str(weights) if weights else None,
                data=str(csv), seconds=round(time.time()-t0, 1), dropped=dls.df.attrs.get('dropped', []))
    m = write_report(learn, out, info, fn_col)
    print(f"Validation MAE {m['mae']:.3f} heads, RMSE {m['rmse']:.3f}, R² {m['r2']:.3f} in {m['seconds']:.0f}s. "
          f"Model: {out/'export.pkl'}")
    return learn

def fit(learn, recipe, epochs, lr, freeze_epochs=1, cbs=None):
    "Run `recipe` ('fine_tune' or 'fit_one_cycle'), inside `distrib_ctx` when launched on several processes"
    if num_distrib(): from fastai.distributed import distrib_ctx # needs `accelerate`, present under `accelerate launch`
    with learn.distrib_ctx() if num_distrib() else contextlib.nullcontext():
        if recipe=='fine_tune': learn.fine_tune(epochs, base_lr=lr, freeze_epochs=freeze_epochs, cbs=cbs)
        else: learn.fit_one_cycle(epochs, lr, cbs=cbs)

@call_parse
def main(data:str=None, # Folder with counts.csv, or a CSV file (default: the synthetic data set, generated if absent)
         img_dir:str=None, # Folder the image names are relative to (default: images/ beside the CSV, else its folder)
         fn_col:str='image', # CSV column with image file names
         label_col:str='count', # CSV column with counts
         out:str=None, # Run folder for the model and reports (default: models/run-DATE-TIME)
         arch:str='resnet34', # torchvision ResNet: resnet18, resnet34, resnet50, resnet101 or resnet152
         size:int=64, # Images are resized to size x size
         bs:int=32, # Batch size
         epochs:int=14, # Epochs (unfrozen epochs when fine-tuning)
         freeze_epochs:int=1, # Epochs with the pretrained body frozen, before --epochs
         lr:float=None, # Learning rate (default: lr_find's valley suggestion)
         valid_pct:float=0.2, # Share of images held out for validation (unless the CSV has an is_valid column)
         seed:int=42, # Random seed: the same seed gives the same split and metrics
         pretrained:str='auto', # ImageNet weights: auto (if available), yes (required) or no
         weights:str=None, # A local torchvision state dict for the body, instead of ImageNet weights
         loss:str='mse', # Loss: mse, l1 or huber
         workers:int=0, # Data-loading processes
         drop_bad:bool=False, # Skip bad CSV rows (listed) instead of stopping
         method:str='squish', # How images are made square: squish or pad
        ):
    "Train a ResNet to count things in images, from a CSV of image,count rows"
    with user_errors(): train(**locals())
