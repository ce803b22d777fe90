"""Train a counting model: `python -m flowers.train` (see `--help`)."""
import os, shutil, sys, time
from pathlib import Path
from fastai.vision.all import *
from fastcore.script import call_parse
from .errors import FlowersError, check_int, user_errors
from .data import count_dls, default_data, check_method
from .density import MAP_STRIDE, without_points
from .learner import count_learner, resolve_pretrained, get_arch, check_loss, check_head
from .report import write_report, versions, save_fig
from .safe import save_safe
from .calibrate import calibrate
from .progress import plain_progress, epoch_lines
from .atomic import atomic_path, remove_stale
from .checkpoint import *
from .precision import set_precision, check_precision, to_fp32
from .distributed import setup_ddp, teardown_ddp, ddp_ctx, broadcast_obj, alone

__all__ = ['DEFAULT_LR', 'SCRATCH_LR', 'find_csv', 'find_lr', 'pick_lr', 'check_lr', 'fit', 'train']

DEFAULT_LR = 2e-3 # fastai's `fine_tune` default, used when the learning-rate finder gives no usable suggestion
# From random init, lr_find's valley ranged over 6e-4..2.5e-3 across five seeds, and runs below 2e-3 ended above MAE 1.1;
# 2e-3..5e-3 all ended at 0.87..1.0 (benchmarks/results/recipe_grid.jsonl)
SCRATCH_LR = 3e-3

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
        with learn.no_bar():
            # from 1e-5, not fastai's 1e-7: the curve is flat below it, and each skipped step costs a training batch
            lr = float(learn.lr_find(start_lr=1e-5, num_it=min(60, 3*len(learn.dls.train)+10), suggest_funcs=(valley,)).valley)
        if fname: save_fig(plt.gcf(), fname)
    except Exception as e: lr = float('nan'); print(f'lr_find failed ({e})')
    finally: plt.close('all')
    if not (1e-6 <= lr <= 1): # nan, or a suggestion no sane schedule would use
        print(f'lr_find gave no usable suggestion ({lr:g}); using lr={DEFAULT_LR:g}')
        lr = DEFAULT_LR
    return lr

def pick_lr(lr, # A number, 'find' (lr_find's valley), or None for the recipe's default
            learn, # The `Learner`, for `lr_find`
            recipe, # 'fine_tune' or 'fit_one_cycle'
            fname=None, # Where to save the lr_find plot
           ) -> float:
    "The learning rate to train with: `lr`, else lr_find's valley when fine-tuning and `SCRATCH_LR` from random init"
    lr = check_lr(lr)
    if lr is None: lr = 'find' if recipe=='fine_tune' else SCRATCH_LR
    return find_lr(learn, fname) if lr=='find' else lr

def check_lr(lr):
    "`lr` as a float, 'find' or None; raises if it is none of these"
    if lr is None or lr=='find': return lr
    try: lr = float(lr)
    except (TypeError, ValueError): raise FlowersError(f"--lr must be a number or 'find', not {lr!r}") from None
    if not 0 < lr <= 10: raise FlowersError(f"--lr {lr:g} is not a usable learning rate; try 1e-3..1e-2, or 'find'")
    return lr

def _is_main(): return rank_distrib()==0

OLDER = dict(head='pool', stride=16) # settings of runs saved before they were recorded
MIN_SIZE = 32 # a ResNet halves its input five times: below this its last feature map is under one pixel

def check_args(a):
    "Raise on settings no run can use, before any slow work"
    get_arch(a.arch), check_head(a.head, a.stride), check_loss(a.loss), check_method(a.method), check_precision(a.precision), check_lr(a.lr)
    for k,lo in (('epochs',1), ('bs',1), ('size',MIN_SIZE), ('workers',0), ('freeze_epochs',0)):
        check_int(f"--{k.replace('_','-')}", a[k], lo, f" (smaller images vanish inside {a.arch}; use 64 or more)" if k=='size' else '')
    if not (isinstance(a.valid_pct, (int,float)) and 0 < a.valid_pct < 1):
        raise FlowersError(f"--valid-pct {a.valid_pct!r}: must be between 0 and 1 (e.g. 0.2 holds out a fifth of the images)")

def check_out(out) -> bool:
    "Raise unless run folder `out` can be written; returns whether it is new (removed again if the run fails)"
    if out.exists() and not out.is_dir(): raise FlowersError(f"--out {out}: is a file, not a folder; pick another name")
    new = not out.exists()
    try: out.mkdir(parents=True, exist_ok=True)
    except OSError as e: raise FlowersError(f"--out {out}: can't create the folder ({e.strerror})") from None
    if not os.access(out, os.W_OK|os.X_OK): raise FlowersError(f"--out {out}: this folder is not writable")
    return new

class TrainingGuard(Callback):
    "Stop, with a clear message, a fit whose loss stops being a number; count the optimiser steps taken"
    order = Recorder.order+2
    def before_fit(self): self.steps = getattr(self, 'steps', 0)
    def after_loss(self):
        if self.training and not torch.isfinite(self.loss).all():
            raise FlowersError(f"training diverged: the loss became {float(self.loss.detach()):g} in epoch {self.epoch+1}; nothing was exported. "
                               f"Try a lower --lr (e.g. half of {self.opt.hypers[-1]['lr']:.2g}) or check the counts for extreme values")
    def after_step(self): self.steps += 1

def train(data:str=None, # Folder with counts.csv, or a CSV file (default: the synthetic data set, generated if absent)
          img_dir:str=None, # Folder the image names are relative to (default: images/ beside the CSV, else its folder)
          fn_col:str='image', # CSV column with image file names
          label_col:str='count', # CSV column with counts
          out:str=None, # Run folder for the model and reports (default: models/run-DATE-TIME)
          arch:str='resnet18', # torchvision ResNet: resnet18, resnet34, resnet50, resnet101 or resnet152
          head:str='map', # map (counts per location, summed; learns head positions from points.csv when present) or pool (fastai's)
          stride:int=MAP_STRIDE, # Input pixels per cell of the count map (--head map): 8 or 16
          size:int=64, # Images are resized to size x size
          bs:int=16, # Batch size (per process when data-parallel): on held-out families 16 beat 64, at the same speed per image on a CPU
          epochs:int=15, # Epochs (unfrozen epochs when fine-tuning)
          freeze_epochs:int=1, # Epochs with the pretrained body frozen, before `epochs`
          lr:str=None, # Learning rate, or 'find' for lr_find's valley (default: 'find' when fine-tuning, 3e-3 from random init)
          valid_pct:float=0.2, # Share of images held out for validation (unless the CSV has an is_valid column)
          seed:int=42, # Random seed: the same seed gives the same split and metrics
          pretrained:str='auto', # ImageNet weights: auto (if available), yes (required) or no
          weights:str=None, # A local torchvision state dict for the body, instead of ImageNet weights
          loss:str='mse', # Loss: mse, l1 or huber
          workers:int=0, # Data-loading processes
          drop_bad:bool=False, # Skip bad CSV rows and images (listed in metrics.json) instead of stopping
          method:str='squish', # How images are made square: squish or pad
          precision:str='auto', # auto (bf16 on CPUs with native bf16, fp16 on CUDA), fp32, bf16 or fp16
          resume:str=None, # Run folder of an interrupted run to continue, with its settings and schedule
          aug=True, # Count-preserving augmentation (`count_tfms`): True, False, or a dict of its arguments
         ) -> Learner:
    "Train a ResNet to count, export it and write reports to `out`; returns the `Learner` (`learn.interrupted` if stopped by a signal)"
    t0 = time.time()
    args = {k:(str(v) if isinstance(v, Path) else v) for k,v in locals().items() if k not in ('t0','resume')}
    state = _resume_state(resume) if resume else None
    # what an older state lacks is filled by what it was then (OLDER), else by this call's settings
    if state: args,out = {**args, **OLDER, **state['args']},Path(resume)
    a = AttrDict(args)
    check_args(a)
    setup_ddp()
    out = broadcast_obj(Path(out or Path('models')/time.strftime('run-%Y%m%d-%H%M%S'))) # rank 0's clock names the folder
    new = check_out(out) if _is_main() else False
    try: return _train(a, out, state, resume, args, t0)
    except BaseException as e:
        # a run that failed, or was aborted before its first epoch ended, leaves no half-empty folder behind
        if new and not (isinstance(e, KeyboardInterrupt) and (out/CHECKPOINT).exists()): shutil.rmtree(out, ignore_errors=True)
        raise
    finally: teardown_ddp()

def _train(a, out, state, resume, args, t0):
    "The body of `train`, once the settings are checked and `out` exists"
    with plain_progress():
        csv = find_csv(a.data) if _is_main() else None # rank 0 alone generates the default data set
        csv = broadcast_obj(csv)
        if _is_main(): remove_stale(out)
        set_seed(a.seed, reproducible=True)
        dls = count_dls(csv, a.img_dir, a.fn_col, a.label_col, size=a.size, bs=a.bs, valid_pct=a.valid_pct, seed=a.seed,
                        method=a.method, drop_bad=a.drop_bad, num_workers=a.workers, aug=a.aug, points=a.head=='map')
        use_pre = state['pretrained'] if state else a.weights is None and resolve_pretrained(a.arch, a.pretrained)
        # a resumed run's checkpoint holds every weight: no need to fetch pretrained ones again
        learn = count_learner(dls, a.arch, a.head, a.stride, pretrained=use_pre and not state, weights=None if state else a.weights, loss=a.loss, path=out, model_dir='.')
        recipe = 'fine_tune' if (use_pre or a.weights is not None) else 'fit_one_cycle'
        precision = set_precision(learn, a.precision)
        if state: lr = state['lr']; load_checkpoint(learn, out)
        else:
            if _is_main():
                with alone(): lr = pick_lr(a.lr, learn, recipe, out/'lr_find.png') # once, for all processes
            lr = broadcast_obj(lr if _is_main() else None)
            state = dict(args=args, lr=lr, recipe=recipe, pretrained=bool(use_pre), epochs_done=0)
        start = state['epochs_done']
        what = f'local weights {a.weights}' if a.weights else 'ImageNet weights' if use_pre else 'random init'
        print(f'Training {a.arch} from {what} with {recipe}: {a.epochs} epochs, lr={lr:.2g}, {a.size}px, {precision}, '
              f'{len(dls.train_ds)} train / {len(dls.valid_ds)} valid images' + (f'; resuming after epoch {start}' if start else ''))
        guard = TrainingGuard()
        with stop_on_signals(StopFlag()) as flag, epoch_lines(learn):
            fit(learn, recipe, a.epochs, lr, a.freeze_epochs, start=start,
                cbs=[GracefulStop(flag), guard] + ([Checkpoint(out, state)] if _is_main() else []))
    learn.interrupted = flag.signal
    if not guard.steps and not flag and start < a.epochs + (a.freeze_epochs if recipe=='fine_tune' else 0):
        raise FlowersError(f"training took no step ({len(dls.train_ds)} training images, bs {dls.train.bs}); nothing was exported")
    to_fp32(learn) # what load_learner users get: reports measure it, and no bf16 callback rides along in export.pkl
    if not _is_main(): return learn
    with alone(): return _finish(learn, out, a, state, flag, dls, csv, lr, recipe, precision, use_pre, resume, t0)

def _finish(learn, out, a, state, flag, dls, csv, lr, recipe, precision, use_pre, resume, t0):
    "Export and report, in rank 0 only"
    if flag: return _save_interrupted(learn, out, a, state)
    _export(learn, out, a)
    info = dict(lr=lr, epochs=a.epochs, freeze_epochs=a.freeze_epochs if recipe=='fine_tune' else 0, arch=a.arch, head=a.head, size=a.size,
                **({'stride': a.stride} if a.head=='map' else {}), bs=a.bs, loss=a.loss, seed=a.seed, recipe=recipe, precision=precision, pretrained=bool(use_pre), weights=a.weights,
                aug=a.aug, data=str(csv), seconds=round(time.time()-t0, 1), resumed=bool(resume),
                dropped=dls.df.attrs.get('dropped', []))
    with epoch_lines(learn): m = write_report(learn, out, info, a.fn_col) # no bar characters in logs
    for f in (CHECKPOINT, BEST, STATE): (out/f).unlink(missing_ok=True) # finished: the exported model supersedes them
    print(f"Validation MAE {m['mae']:.3f} heads, RMSE {m['rmse']:.3f}, R² {m['r2']:.3f} in {m['seconds']:.0f}s. "
          f"Model: {out/'export.pkl'}")
    return learn

def _resume_state(run):
    "The saved state of run folder `run`, or an error saying why it can't be resumed"
    state = read_state(run)
    if not state: raise FlowersError(f"--resume {run}: no {STATE} there; only a run that was interrupted can be resumed")
    if not (Path(run)/CHECKPOINT).is_file():
        raise FlowersError(f"--resume {run}: no {CHECKPOINT}; the run finished or stopped before its first epoch ended")
    return state

def _export(learn, out, a):
    "Calibrate on the validation set, then write `export.pkl` and the safe format (both carry the calibration), each atomically"
    without_points(learn) # head positions were for training; export.pkl's data decode (image, count) as `predict` needs
    learn.calibration = calibrate(learn)
    with atomic_path(out/'export.pkl') as tmp: learn.export(tmp.name)
    save_safe(learn, out, a.arch, fn_col=a.fn_col, label_col=a.label_col, versions=versions())

def _save_interrupted(learn, out, a, state):
    "Export the best model so far after a signal, and say where it went and how to go on"
    best = state.get('best')
    if best: load_checkpoint(learn, out, BEST)
    if not state.get('epochs_done'):
        print(f'{learn.interrupted}: stopped before the first epoch ended; nothing worth saving', file=sys.stderr)
        return learn
    _export(learn, out, a)
    print(f"{learn.interrupted}: saved the best model so far (epoch {best['epoch']+1}, valid MAE {best['mae']:.3f}) to "
          f"{out/'export.pkl'} and {out/'model.safetensors'}. Continue with: python -m flowers.train --resume {out}", file=sys.stderr)
    return learn

def fit(learn, # The `Learner` to train
        recipe, # 'fine_tune' (pretrained body) or 'fit_one_cycle' (random init)
        epochs, # Epochs (unfrozen epochs for 'fine_tune')
        lr, # Learning rate (base_lr for 'fine_tune')
        freeze_epochs=1, # Frozen epochs first, for 'fine_tune'
        start=0, # Epochs already done, counting frozen ones (a resumed run)
        cbs=None, # Callbacks for every fit
       ):
    "Run `recipe`, data-parallel when launched on several processes"
    with ddp_ctx(learn):
        if recipe=='fit_one_cycle': return learn.fit_one_cycle(epochs, lr, start_epoch=start, cbs=cbs)
        # fastai's `fine_tune`, split at its phase boundary so that a resumed run can start inside either phase
        if start < freeze_epochs:
            learn.freeze()
            learn.fit_one_cycle(freeze_epochs, slice(lr), pct_start=0.99, start_epoch=start, cbs=cbs)
        if any(isinstance(c, GracefulStop) and c.flag for c in L(cbs)): return
        learn.unfreeze()
        learn.fit_one_cycle(epochs, slice(lr/2/100, lr/2), pct_start=0.3, div=5.0, start_epoch=max(0, start-freeze_epochs), cbs=cbs)

if __name__=='__main__': sys.argv[0] = 'python -m flowers.train' # the usage line argparse prints

@call_parse
@delegates(train, but=['aug'])
def main(**kwargs):
    "Train a ResNet to count things in images, from a CSV of image,count rows"
    with user_errors():
        try: learn = train(**kwargs)
        except KeyboardInterrupt: print('Interrupted', file=sys.stderr); sys.exit(130)
    if learn.interrupted: sys.exit(130)
