"""A training run once its settings are checked: the data, the learner, the learning rate, fastai's recipe, export and reports."""
import hashlib, shlex, shutil, sys, time
from pathlib import Path
from fastai.vision.all import *
from .errors import FlowersError
from .settings import SCHEDULES, LR_PLOT, check_lr, find_csv, default_schedule, run_defaults, check_folder, new_run_folder
from .data import count_dls
from .density import drop_points
from .learner import count_learner, resolve_pretrained
from .report import write_report, valid_predictions, versions, save_fig
from .safe import save_safe
from .calibrate import calibrate
from .progress import plain_progress, epoch_lines
from .atomic import atomic_path, remove_stale
from .checkpoint import *
from .precision import resolve_precision, set_precision, to_fp32
from .memory import check_memory
from .budget import fit_epochs, KeepBudget, short_of, short_note
from .distributed import setup_ddp, teardown_ddp, ddp_ctx, broadcast_obj, alone

__all__ = ['DEFAULT_LR', 'SCRATCH_LR', 'find_lr', 'pick_lr', 'check_out', 'TrainingGuard', 'run', 'fit']

DEFAULT_LR = 2e-3 # fastai's `fine_tune` default, used when the learning-rate finder gives no usable suggestion
# From random init, lr_find's valley ranged over 6e-4..2.5e-3 across five seeds, and runs below 2e-3 ended above MAE 1.1;
# 2e-3..5e-3 all ended at 0.87..1.0 (benchmarks/results/recipe_grid.jsonl)
SCRATCH_LR = SCHEDULES['fp32']['lr'] # random init, batches of 16; `SCHEDULES` holds each schedule's

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
            scratch=SCRATCH_LR, # The learning rate from random init (the schedule's)
           ) -> float:
    "The learning rate to train with: `lr`, else lr_find's valley when fine-tuning and `scratch` from random init"
    lr = check_lr(lr)
    if lr is None: lr = 'find' if recipe=='fine_tune' else scratch
    return find_lr(learn, fname) if lr=='find' else lr

def _is_main(): return rank_distrib()==0

def split_key(dls, # `DataLoaders` from `count_dls`
              fn_col='image', # Column holding image file names
             ) -> str:
    "A hash of the names of the images `dls` validates on"
    return hashlib.blake2b('\n'.join(sorted(map(str, dls.valid.items[fn_col]))).encode(), digest_size=16).hexdigest()

check_out = check_folder # its name from before it checked `--maps` too

class TrainingGuard(Callback):
    "Stop, with a clear message, a fit whose loss stops being a number; count the optimiser steps taken"
    order = Recorder.order+2
    def __init__(self, lr=None): self.lr = lr # the run's --lr (default: the optimiser's now)
    def before_fit(self): self.steps = getattr(self, 'steps', 0)
    def after_loss(self):
        if self.training and not torch.isfinite(self.loss).all():
            # the schedule's lr now is no guide: one cycle's first steps take a 25th of the run's
            lr = self.lr or self.opt.hypers[-1]['lr']
            raise FlowersError(f"training diverged: the loss became {float(self.loss.detach()):g} in epoch {self.epoch+1}; nothing was exported. "
                               f"Try a lower --lr than this run's {lr:.2g} (e.g. {lr/2:.2g}) or check the counts for extreme values")
    def after_step(self): self.steps += 1

def run(a, # The checked settings of `flowers.train.train`
        out, # Its run folder, or None for a new one named by the date
        state=None, # What the interrupted run being resumed saved, else None
        args=None, # The settings as given, saved with each checkpoint
        t0=None, # When the call started
       ) -> Learner:
    "Train, export and report, as `flowers.train.train` (which checks the settings first); data-parallel when launched so"
    setup_ddp()
    made = out is None and _is_main()
    out = broadcast_obj(new_run_folder() if made else out and Path(out)) # rank 0 names the folder
    new = (check_folder(out) or made) if _is_main() else False # a new one is removed again if the run fails
    try: return _train(a, out, state, args, t0 or time.time())
    except BaseException as e:
        # a run that failed, or was aborted before its first epoch ended, leaves no half-empty folder behind
        if new and not (isinstance(e, KeyboardInterrupt) and (out/CHECKPOINT).exists()): shutil.rmtree(out, ignore_errors=True)
        raise
    finally: teardown_ddp()

def _fill_schedule(a, # The checked settings, those left to the schedule None
                   args, # The settings as saved with each checkpoint, or None
                   sched, # The schedule of the run's precision (`default_schedule`)
                   pre, # Does the body start from trained weights?
                  ):
    "Settings left to the schedule set from it (`run_defaults`), once, in `a` and `args`: a resumed run keeps them"
    # the lr, for random init only, is picked with the recipe and saved in the state
    for k,v in run_defaults(sched, pre, a.size, a.stem).items():
        if k=='lr' or a[k] is not None: continue
        a[k] = v
        if args is not None: args[k] = v

def _fit_budget(learn, a, args, recipe, precision, t0) -> KeepBudget:
    "Set the run's epochs, in `a` and `args`, to those that fit `a.minutes` on this machine (`flowers.budget`); returns what keeps them to it"
    # the exported fp32 model counts the validation images again: about 1.5 times bf16's time on CPUs measured (README, Performance)
    a.epochs,keep = fit_epochs(learn, a.epochs, a.minutes, time.time()-t0, a.freeze_epochs if recipe=='fine_tune' else None,
                               fp32=1. if precision=='fp32' else 1.5, hint='; --epochs to choose')
    if args is not None: args['epochs'] = a.epochs
    return keep

def _train(a, out, state, args, t0):
    "The body of `run`, once `out` exists"
    resumed = state is not None
    with plain_progress():
        csv = find_csv(a.data) if _is_main() else None # rank 0 alone generates the default data set
        csv = broadcast_obj(csv)
        if _is_main(): remove_stale(out)
        precision = resolve_precision(a.precision, default_device())
        use_pre = state['pretrained'] if state else a.weights is None and resolve_pretrained(a.arch, a.pretrained)
        budget = a.epochs is None and not state # a resumed run keeps the epochs it was fitted to
        _fill_schedule(a, args, default_schedule(precision, default_device()), use_pre or a.weights is not None)
        check_memory(a, precision, default_device()) # before images are decoded at that size
        set_seed(a.seed, reproducible=True)
        dls = count_dls(csv, a.img_dir, a.fn_col, a.label_col, size=a.size, bs=a.bs, valid_pct=a.valid_pct, seed=a.seed,
                        method=a.method, drop_bad=a.drop_bad, num_workers=a.workers, aug=a.aug, points=a.head=='map')
        split = split_key(dls, a.fn_col)
        # a CSV edited between the interruption and --resume splits anew: the run then validated on images it had trained on
        if state and state.get('split', split)!=split:
            raise FlowersError(f"--resume {out}: {csv} changed since the run was interrupted, and its images split differently: the run would be "
                               f"validated on images it trained on. Put the CSV back as it was to resume, or start a new run with --overwrite")
        # a resumed run's checkpoint holds every weight: no need to fetch pretrained ones again
        learn = count_learner(dls, a.arch, a.head, a.stride, a.context, pretrained=use_pre and not state, weights=None if state else a.weights, loss=a.loss,
                              norm=a.norm, stem=a.stem, path=out, model_dir='.')
        recipe = 'fine_tune' if (use_pre or a.weights is not None) else 'fit_one_cycle'
        set_precision(learn, precision)
        # a resumed run goes on with the epochs of a budget kept before (`state['cut']`), and makes no cut of its own
        keep = KeepBudget(cut=state['cut']) if state and state.get('cut') else None
        if state: lr = state['lr']; load_checkpoint(learn, out)
        else:
            if _is_main():
                with alone(): lr = pick_lr(a.lr, learn, recipe, out/LR_PLOT, default_schedule(precision, default_device())['lr']) # once, for all processes
            lr = broadcast_obj(lr if _is_main() else None)
            schedule = a.epochs if budget else None # the schedule's, where the budget fits others: recorded, and said where far fewer
            if budget: keep = _fit_budget(learn, a, args, recipe, precision, t0)
            state = dict(args=args, lr=lr, recipe=recipe, pretrained=bool(use_pre), epochs_done=0, split=split, schedule=schedule)
        start = state['epochs_done']
        what = f'local weights {a.weights}' if a.weights else 'ImageNet weights' if use_pre else 'random init'
        print(f"Training {a.arch}{' (IBN)' if a.norm=='ibn' else ''} from {what} with {recipe}: {a.epochs} epochs, lr={lr:.2g}, {a.size}px, "
              + (f'stem {a.stem}, ' if a.stem!=2 else '') + (f'head context {a.context}, ' if a.head=='map' else '') + f'{precision}, '
              f'{len(dls.train_ds)} train / {len(dls.valid_ds)} valid images' + (f'; resuming after epoch {start}' if start else ''))
        guard = TrainingGuard(lr)
        with stop_on_signals(StopFlag()) as flag, epoch_lines(learn):
            # a fit planned by the budget is given the most epochs it may be stretched to (`KeepBudget`)
            fit(learn, recipe, getattr(keep, 'most', None) or a.epochs, lr, a.freeze_epochs, start=start,
                cbs=[GracefulStop(flag), guard] + L(keep) + ([Checkpoint(out, state)] if _is_main() else []))
    if keep is not None: a.epochs = getattr(keep, 'epochs', a.epochs) # the epochs trained, cut or stretched, in metrics.json
    learn.interrupted = flag.signal
    if not guard.steps and not flag and start < a.epochs + (a.freeze_epochs if recipe=='fine_tune' else 0):
        raise FlowersError(f"training took no step ({len(dls.train_ds)} training images, bs {dls.train.bs}); nothing was exported")
    to_fp32(learn) # what load_learner users get: reports measure it, and no bf16 callback rides along in export.pkl
    if not _is_main(): return learn
    with alone(): return _finish(learn, out, a, state, flag, dls, csv, lr, recipe, precision, use_pre, resumed, t0, keep)

def _finish(learn, out, a, state, flag, dls, csv, lr, recipe, precision, use_pre, resumed, t0, keep=None):
    "Export and report, in rank 0 only"
    if flag: return _save_interrupted(learn, out, a, state, precision)
    # fitted to the minutes: a machine busy throughout trains the few epochs that fit them, and the run says so (`short_note`),
    # as does the model wherever it is copied (`Counter.train_info`): whoever counts with it later sees its counts only
    short = state.get('schedule') is not None and short_of(a.epochs, state['schedule'])
    train_info = dict(epochs=a.epochs, schedule_epochs=state.get('schedule'), undertrained=short)
    preds = _export(learn, out, a, precision, train_info)
    info = dict(lr=lr, **train_info, freeze_epochs=a.freeze_epochs if recipe=='fine_tune' else 0, arch=a.arch, norm=a.norm, stem=a.stem, head=a.head, size=a.size,
                **(dict(stride=a.stride, context=a.context) if a.head=='map' else {}), bs=a.bs, loss=a.loss, seed=a.seed, recipe=recipe, precision=precision, pretrained=bool(use_pre), weights=a.weights,
                aug=a.aug, data=str(csv), img_dir=str(dls.df.attrs.get('img_dir', '')), seconds=round(time.time()-t0, 1), resumed=resumed,
                dropped=dls.df.attrs.get('dropped', []))
    with epoch_lines(learn): m = write_report(learn, out, info, a.fn_col, preds) # no bar characters in logs
    for f in (CHECKPOINT, BEST, STATE, EXTENT): (out/f).unlink(missing_ok=True) # finished: the exported model supersedes them
    r2 = f"{m['r2']:.3f}" if np.isfinite(m['r2']) else 'undefined (one count in every validation image)' # 'R² nan' read as a fault
    print(f"Validation MAE {m['mae']:.3f} heads, RMSE {m['rmse']:.3f}, R² {r2} in {m['seconds']:.0f}s. "
          f"Model: {out/'export.pkl'}")
    # how long the schedule's epochs would take, from this run's: not where it was resumed (its seconds are the last part's)
    if short: print(short_note(a.epochs, state['schedule'], a.minutes, m['seconds'], None if resumed or keep is None else keep.epoch_seconds()), flush=True)
    # what to do next, as the tutorial's next cell would: the run folder is all `flowers.predict` needs
    print(f"Count photos with it: python -m flowers.predict {shlex.quote(str(out))} YOUR_PHOTOS/ (in Python: "
          f"load_learner({str(out/'export.pkl')!r}).predict(img))")
    return learn

def _export(learn, out, a, precision, train_info=None):
    "Calibrate on the validation set, then write `export.pkl` and the safe format (both carry the calibration, and `train_info`: epochs, the schedule's, undertrained), each atomically; returns the validation predictions"
    drop_points(learn.dls) # head positions were for training; `PointSupervision` stays, to teach them again in a later fit
    # the exported fp32 model's counts: the intervals fitted to them hold on the validation set, as metrics.json reports, by construction
    with epoch_lines(learn): preds = valid_predictions(learn, a.fn_col) # no bar characters in logs
    learn.calibration = calibrate(learn, precision=precision, counts=preds['predicted'])
    learn.train_info = train_info # not `learn.training`: fastai's flag for a training phase
    with atomic_path(out/'export.pkl') as tmp: learn.export(tmp.name)
    save_safe(learn, out, a.arch, fn_col=a.fn_col, label_col=a.label_col, versions=versions())
    return preds

def _save_interrupted(learn, out, a, state, precision):
    "Export the best model so far after a signal, and say where it went and how to go on"
    best = state.get('best')
    if best: load_checkpoint(learn, out, BEST)
    if not state.get('epochs_done'):
        print(f'{learn.interrupted}: stopped before the first epoch ended; nothing worth saving', file=sys.stderr)
        return learn
    _export(learn, out, a, precision)
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
