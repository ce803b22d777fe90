"""Surviving interruptions: a checkpoint each epoch, the best model kept, and Ctrl-C/SIGTERM stopping cleanly."""
import contextlib, json, signal, sys, threading, numpy as np, pandas as pd
from pathlib import Path
from fastai.vision.all import *
from .atomic import atomic_path, atomic_text
from .distributed import any_rank
from .density import PointSupervision
from .budget import KeepBudget
from .settings import STATE, CHECKPOINT, BEST, HISTORY, EXTENT, read_state # here too, where code written before the split finds them

__all__ = ['STATE', 'CHECKPOINT', 'BEST', 'HISTORY', 'EXTENT', 'StopFlag', 'stop_on_signals', 'GracefulStop', 'Checkpoint', 'read_state', 'load_checkpoint']

class StopFlag:
    "Set by a signal handler; read by `GracefulStop` after each batch"
    def __init__(self): self.signal = None
    def __bool__(self): return self.signal is not None

@contextlib.contextmanager
def stop_on_signals(flag:StopFlag, sigs=(signal.SIGINT, signal.SIGTERM)):
    "While inside, the first Ctrl-C or SIGTERM only sets `flag`; a second one aborts at once"
    if threading.current_thread() is not threading.main_thread(): yield flag; return # signals reach the main thread only
    def _handle(signum, frame):
        if flag: raise KeyboardInterrupt
        flag.signal = signal.Signals(signum).name
        print(f'\n{flag.signal}: stopping after this batch and saving the best model so far (again to abort)', file=sys.stderr, flush=True)
    old = {s: signal.signal(s, _handle) for s in sigs}
    try: yield flag
    finally:
        for s,h in old.items(): signal.signal(s, h)

class GracefulStop(Callback):
    "End the fit after the current batch once `flag` is set, in every process at the same batch when data-parallel"
    order = 0
    def __init__(self, flag:StopFlag): self.flag = flag
    def after_batch(self):
        if any_rank(self.flag): raise CancelFitException
    def before_epoch(self):
        if any_rank(self.flag): raise CancelFitException

class Checkpoint(Callback):
    "After each epoch, atomically: a row in `history.csv`, model and optimizer in `checkpoint.pth` (the extent layer in `extent.pth`), the best weights in `best.pth`, progress in `state.json`"
    order = Recorder.order+1 # after the recorder has logged the epoch
    def __init__(self, path, state:dict): # `state`: run settings, and progress when resuming
        self.path,self.state = Path(path),state
        self.rows = pd.read_csv(self.path/HISTORY).to_dict('records')[:state.get('epochs_done', 0)] if (self.path/HISTORY).is_file() else []

    def before_epoch(self): self.skipped = False
    def after_cancel_epoch(self): self.skipped = True # `start_epoch` skipping the epochs a resumed run already did

    def after_epoch(self):
        if self.skipped: return
        vals = {k.lstrip('_'):v for k,v in zip(self.recorder.metric_names, self.recorder.log) if k!='epoch'}
        self.rows.append({'epoch': len(self.rows), 'frozen': self.opt.frozen_idx>0, **vals})
        with atomic_path(self.path/HISTORY) as tmp: pd.DataFrame(self.rows).to_csv(tmp, index=False)
        loss,best = float(vals.get('valid_loss', np.inf)),self.state.get('best')
        if best is None or loss < best['valid_loss']:
            with atomic_path(self.path/BEST) as tmp: torch.save(get_model(self.learn.model).state_dict(), tmp) # not DDP's wrapper
            self.state['best'] = dict(epoch=len(self.rows)-1, valid_loss=loss, mae=float(vals.get('mae', np.nan)))
        ext = _extent_state(self.learn)
        if ext is not None:
            with atomic_path(self.path/EXTENT) as tmp: torch.save(ext, tmp)
        else: (self.path/EXTENT).unlink(missing_ok=True) # an earlier run's, in a folder trained into again with --overwrite
        with atomic_path(self.path/CHECKPOINT) as tmp: save_model(tmp, self.learn.model, self.learn.opt, with_opt=True)
        self.state['epochs_done'] = len(self.rows)
        keep = first(self.learn.cbs.filter(risinstance(KeepBudget)))
        if keep is not None and keep.cut: # the budget kept by fewer epochs: a resumed run trains those
            self.state['cut'] = keep.cut
            if self.state.get('args') is not None: self.state['args']['epochs'] = keep.cut['epochs']
        atomic_text(self.path/STATE, json.dumps(self.state, indent=2))

def _point_supervision(learn):
    "`learn`'s `PointSupervision` callback, or None"
    return first(learn.cbs.filter(risinstance(PointSupervision)))

def _extent_state(learn):
    "`PointSupervision`'s extent layer and its optimiser's state, or None without one"
    ps = _point_supervision(learn)
    return ps.extent_state() if ps is not None else None

def load_checkpoint(learn, run, name=CHECKPOINT, with_opt=True):
    "Load `name` from run folder `run` into `learn` (weights, and for a checkpoint the optimizer state and `PointSupervision`'s extent layer)"
    f = Path(run)/name
    if name==BEST: learn.model.load_state_dict(torch.load(f, map_location='cpu', weights_only=True))
    else:
        if learn.opt is None: learn.create_opt()
        # where fastai's `Learner.load` puts it: the optimiser's state on the CPU and the weights on CUDA failed a GPU run's first resumed step
        load_model(f, learn.model, learn.opt, with_opt=with_opt, device=getattr(learn.dls, 'device', None))
        ps = _point_supervision(learn)
        if ps is not None and (Path(run)/EXTENT).is_file(): ps.saved = Path(run)/EXTENT # loaded when the layer is made, at the first batch
    return learn
