"""Epochs that fit the time budget: this machine's speed, measured on a few batches of the run itself before it trains; and the fit kept to it."""
import math, random, time
from fastai.vision.all import *
from .settings import MINUTES
from .distributed import ddp_ctx, broadcast_obj

__all__ = ['MINUTES', 'YARDSTICK', 'MAX_SCALE', 'BatchTimer', 'time_batches', 'finish_seconds', 'budget_epochs', 'budget_images', 'KeepBudget', 'STRETCH', 'RETIME', 'fit_epochs', 'short_of', 'short_note']

# the default data set's training and validation images: a larger data set trains the epochs that fit its run in the budget, as long
# per image and longer in all, not fewer epochs; a smaller one the epochs of its own that fit the minutes, up to `MAX_SCALE` times the
# schedule's: 400 fields trained the default set's 25 epochs in 1 of the 5 minutes, and counted fresh fields with MAE 2.10, the
# second renderer's 2.02; in 75 epochs, 3 minutes, 1.78 and 1.65 (README, Train)
YARDSTICK = (1600, 400)
MAX_SCALE = 3 # at most three times the schedule's epochs: measured to help at 3x (benchmarks/README.md), not beyond
MARGIN = .9 # what the epochs do besides their batches (a checkpoint each), and a 2-core machine whose speed swings within the hour
REPORT_S = 5 # export, the safe format and the report's plots, besides their passes over the images
# how much of the budget the epochs may use before `KeepBudget` shortens them: half of what `MARGIN` keeps back; the rest is
# for what the timer doesn't see: the work after them taking longer than `finish_seconds` says, and the processes' exit
KEEP = (1 + MARGIN)/2

class BatchTimer(Callback):
    "Time `n` training and `n` validation batches, after `skip` of each to warm up, then end each phase: a measurement, not training"
    order = 100 # after every other callback's `after_batch`, whose work is part of a batch's time
    def __init__(self, n=8, skip=2): self.n,self.skip = n,skip
    def before_fit(self): self.times = dict(train=[], valid=[])
    def before_train(self): self._start()
    def before_validate(self): self._start()
    def _start(self):
        # its images decoded first, as every epoch after the first finds them: decoded in threads beside the first
        # batches, they made a single core's training batches three times as slow for 15 batches
        dl = getattr(self.dl, 'dl', self.dl) # a data-parallel fit's `DistributedDL` wraps the loader
        if hasattr(dl, 'fill'): dl.fill()
        self.last = time.perf_counter()
    def after_batch(self):
        # from one batch's end to the next's: the loading and augmentation of each batch included
        now,ts = time.perf_counter(),self.times['train' if self.training else 'valid']
        ts.append((now - self.last)/find_bs(self.yb)); self.last = now
        if len(ts) >= self.skip + self.n: raise CancelTrainException() if self.training else CancelValidException()

    def per_image(self) -> tuple:
        "Mean seconds per image of training and of validation (the warm-up batches too where there were no others)"
        # not the median: the slower batches are an epoch's time too, and the median of 8 put the fp32 default's epochs 5% short
        return tuple(float(np.mean(ts[self.skip:] or ts)) if ts else 0. for ts in self.times.values())

def _random_state(dls) -> tuple:
    "Every random stream a fit draws from: fastai's `get_random_states` (Python's, NumPy's, torch's, CUDA's) and each loader's own (its shuffle)"
    return get_random_states(),[dl.rng.getstate() for dl in dls.loaders]

def _set_random_state(dls, state):
    states,rngs = state
    set_random_states(**states)
    for dl,st in zip(dls.loaders, rngs): dl.rng = random.Random(); dl.rng.setstate(st) # a fit's loader replaces its `rng`

def time_batches(learn, # The `Learner` about to train, its precision set
                 n=8, # Batches of each phase timed
                 skip=2, # Batches of each phase run first, untimed
                ) -> tuple:
    "Seconds per image of a training step and of validation on `learn`'s own batches; its weights, optimiser and random streams left as they were"
    # as `lr_find` is undone: the run that follows is the same, to the bit, as one told its epochs
    weights,rs = {k:v.detach().clone() for k,v in learn.model.state_dict().items()},_random_state(learn.dls)
    timer = BatchTimer(n, skip)
    try:
        with learn.no_logging(), learn.no_bar(): learn.fit(1, lr=0., cbs=timer)
    finally:
        # no gradients left: fastai's optimisers step every parameter that has one, a frozen body's too (its weight decay)
        learn.model.load_state_dict(weights); learn.model.zero_grad(set_to_none=True); learn.opt = None
        _set_random_state(learn.dls, rs)
    return timer.per_image()

def _epoch_seconds(per_image, n=YARDSTICK, procs=1) -> float:
    "Seconds an epoch of `n` (training, validation) images takes at `per_image` seconds each, shared by `procs` processes"
    return (n[0]*per_image[0] + n[1]*per_image[1])/procs

def budget_images(per_image, # (training, validation) seconds per image, from `time_batches`
                  n, # The data's (training, validation) images
                  procs=1, # Data-parallel processes sharing every epoch
                 ) -> tuple:
    "The (training, validation) images whose epochs the minutes are fitted to: `n`, or `YARDSTICK` where its epochs are shorter"
    return min(n, YARDSTICK, key=lambda o: _epoch_seconds(per_image, o, procs))

def finish_seconds(per_image, # (training, validation) seconds per image, from `time_batches`
                   fp32=1., # How much slower the fp32 export counts the validation images than training's precision
                   n=YARDSTICK, # The (training, validation) images of the run
                  ) -> float:
    "Seconds a run of `n` images takes after its epochs: calibration, export and report, in the first process alone"
    nt,nv = n
    # calibration's fingerprints of every image, in training's precision, and the exported model's count of the validation images
    return (nt + nv)*per_image[1] + nv*per_image[1]*fp32 + REPORT_S

def _epochs_seconds(per_image, elapsed, minutes, share, fp32=1., n=YARDSTICK) -> float:
    "Seconds the epochs of `n` images may take: `share` of `minutes`, less what the run took before them and what follows them"
    return minutes*60*share - elapsed - finish_seconds(per_image, fp32, n)

def budget_epochs(per_image, # (training, validation) seconds per image, from `time_batches`
                  elapsed, # Seconds the run has taken so far: imports, data generation, decoding, `lr_find`
                  reference, # The schedule's epochs, set for its machines; at most `MAX_SCALE` times it
                  minutes=MINUTES, # The budget
                  fp32=1., # How much slower the fp32 export counts the validation images than training's precision
                  procs=1, # Data-parallel processes, each `per_image` as fast, sharing every epoch
                  n=YARDSTICK, # The (training, validation) images the epochs are fitted to (`budget_images`)
                 ) -> int:
    "Epochs of `n` images that fit `minutes`, with what follows them: at least 1, at most `MAX_SCALE` times `reference`"
    epoch = _epoch_seconds(per_image, n, procs)
    fit = int(_epochs_seconds(per_image, elapsed, minutes, MARGIN, fp32, n)//epoch) if epoch>0 else reference
    return max(1, min(MAX_SCALE*reference, fit))

def _cycle_pct(cut, epoch, it=0, n_iter=1) -> float:
    "How far through one cycle a fit is at batch `it` of `epoch`, its rest run in `cut['epochs']` from `cut['epoch']` on (compressed or stretched)"
    return cut['pct'] + (1 - cut['pct'])*(epoch - cut['epoch'] + it/n_iter)/(cut['epochs'] - cut['epoch'])

STRETCH = .5 # how far through its one cycle a run may still be stretched over more epochs: where its learning rate is still high

class KeepBudget(Callback):
    "Keep a fit fitted to the budget to it: one cycle's rest compressed into the epochs that still fit when they run slower than timed, and stretched over more when faster"
    order = Recorder.order+.5 # said after the epoch's line, and cut before `Checkpoint` saves it, so that a resumed run goes on with the cut
    def __init__(self, end=None, # `time.time()` by which the epochs must end; None: no new cuts (a resumed run)
                 cut=None, # A cut made before, `dict(epoch, pct, epochs)`: from `epoch` on, the cycle runs from `pct` to its end in `epochs`
                 timed=None, # Seconds an epoch was timed to take, said with a cut
                 plan=None, # Epochs planned, where the fit is given more: `most`, which it may be stretched to; None: the fit's own
                 most=None, # Epochs to give the fit: the most it may be stretched to (`fit_epochs` sets both)
                 fill=None): # `time.time()` by which stretched epochs end (the budget less its margin); None: never stretched
        store_attr()

    def before_fit(self):
        # fine-tuning's frozen epochs are not the budget's to cut; the unfrozen ones after them are
        self.active = not (self.opt is not None and self.opt.frozen_idx > 0)
        self.starts,self.given = [],self.n_epoch

    def before_epoch(self):
        if not self.active: return
        # fastai's loop runs to the fit's epochs, counted once as it starts; its one cycle to `n_epoch`, read at every batch: the
        # plan's, to the bit as a fit given them, until a cut or a stretch schedules the rest (`before_batch`)
        if self.epoch==0 and self.plan and not self.cut: self.learn.n_epoch = self.plan
        if self.epoch >= self._planned(): raise CancelFitException()
        self.starts.append(time.time()) # the epochs that run: `_took` times them
        bar = getattr(getattr(self.learn, 'progress', None), 'mbar', None)
        if bar is not None: bar.main_bar.total = self._planned() # an interactive bar counts the epochs planned, not the fit's most

    def before_batch(self):
        # fastai's `ParamScheduler` (order 60) sets each batch's lr and momentum from `pct_train`
        if self.active and self.training and self.cut: self.learn.pct_train = _cycle_pct(self.cut, self.epoch, self.iter, self.n_iter)

    def after_epoch(self):
        if self.active: self.ended = time.time()
        if not (self.active and self.end) or len(self.starts) < 2: return # two epochs' times first: the first one warms up
        now = time.time()
        took = self._took(now)
        # every process keeps the first one's epochs: one that stopped sooner would leave the others waiting
        cut = broadcast_obj(self._new_cut(now, took) if rank_distrib()==0 else None)
        if cut is None: return
        if rank_distrib()==0:
            e,was = len(self.starts),self._planned()
            timed = f', not the {e*self.timed:.0f} s timed' if self.timed else ''
            how = 'compressed into' if cut['epochs'] < was else 'stretched over'
            print(f"after epoch {self.epoch}: {e} epochs took {now - self.starts[0]:.0f} s{timed}; at {took:.1f} s an epoch, {cut['epochs']} epochs fit "
                  f"the budget, not {was}: the rest of the one cycle is {how} them", flush=True)
        self.cut = cut

    def _new_cut(self, now, took):
        "The cut that ends the epochs by `self.end` at `took` seconds each; or that stretches them to end by `self.fill`, a tenth more or up to the fit's most; or None"
        e,total = self.epoch + 1,self._planned() # epochs done, and planned now
        if e >= total: return None
        if now + (total - e)*took > self.end:
            # never fewer than one more epoch: the cycle's end, at a small learning rate, is where the model settles
            fit = max(e + 1, e + int((self.end - now)//took))
            return None if fit >= total else dict(epoch=e, pct=self._pct(e), epochs=fit)
        if self.fill is None or self._pct(e) >= STRETCH: return None
        # epochs timed slower than they run (this machine's speed swings by a third within the minute: benchmarks/README.md)
        # left a fifth of the budget unused; stretched by a tenth or more only, not re-planned for every few seconds
        fit = min(self.given, e + int((self.fill - now)//took))
        return dict(epoch=e, pct=self._pct(e), epochs=fit) if fit >= 1.1*total else None

    def after_fit(self):
        if self.active: self.epochs = self._planned() # the epochs the fit ran to, its cuts and stretches made: what a report records

    def _planned(self): return self.cut['epochs'] if self.cut else self.n_epoch
    def _pct(self, epoch): return _cycle_pct(self.cut, epoch) if self.cut else epoch/self.n_epoch

    def _took(self, now):
        "Seconds an epoch takes: the median of the last three, each from its start to the next's, the last's to `now`"
        return float(np.median((np.diff(self.starts).tolist() + [now - self.starts[-1]])[-3:]))

    def epoch_seconds(self) -> float:
        "Seconds an epoch took, as the cuts measure it (`_took`) when the fit's epochs ended; the seconds timed where none ran"
        return self._took(self.ended) if self.starts else self.timed

def short_of(epochs, # Epochs a run fits, or trained
             reference, # The schedule's epochs
            ) -> bool:
    "Are `epochs` under half the schedule's? A run that trains them counts far worse than it would (README, Train)"
    return epochs < reference/2

def short_note(epochs, # Epochs the run trained
               reference, # The schedule's epochs
               minutes, # The budget they were fitted to
               seconds, # What the run took
               epoch=None, # Seconds an epoch took (`KeepBudget.epoch_seconds`), for how long the schedule's would take
              ) -> str:
    "What a run fitted to under half the schedule's epochs says as it ends: its model is undertrained, and what to give it"
    # 1 epoch, exit 0, and a validation MAE of 3.7 read as a model to use: a machine busy throughout fits no more (benchmarks/README.md)
    m = math.ceil((seconds + (reference-epochs)*epoch)/60) if epoch else None
    need = f" (about {m} minute{'s'*(m>1)} here)" if m else ''
    return (f"Undertrained: {epochs} epochs trained in the {minutes:g} minutes given, under half the schedule's {reference}, and its "
            f"model counts worse than it would in them. --epochs {reference} trains them{need}")

RETIME = 2 # timings more, at most, where the first fits under half the schedule's epochs and each is faster than the one before

def _timed(learn) -> tuple:
    "`time_batches` of `learn` as its fit will run, each process on its share and their gradients averaged; and the seconds it took"
    t = time.time()
    with ddp_ctx(learn): per = time_batches(learn)
    return per,time.time() - t

def _minutes(secs) -> str: return f"{secs/60:.0f}" if secs >= 600 else f"{secs/60:.1f}"

def fit_epochs(learn, # The `Learner` about to train, its precision set
               reference, # The schedule's epochs, set for its machines
               minutes=MINUTES, # The budget
               elapsed=0., # Seconds already spent on what the budget includes
               freeze_epochs=None, # Fine-tuning: `fine_tune`'s epochs with the body frozen, before those returned; None: not
               fp32=1., # How much slower the fp32 export counts the validation images than training's precision
               hint='', # Said after the epochs: how to choose others
              ) -> tuple:
    "Epochs of `learn` that fit `minutes` on this machine, timed on its own batches (`time_batches`), said; and the `KeepBudget` that holds them to it"
    # the body's steps are the epochs' work; `fine_tune` freezes it again for its first phase
    if freeze_epochs is not None: learn.unfreeze()
    procs,data = num_distrib() or 1,(len(learn.dls.train_ds), len(learn.dls.valid_ds))
    per,took = _timed(learn)
    elapsed += took
    for i in range(RETIME + 1):
        imgs = budget_images(per, data, procs)
        fit = broadcast_obj(budget_epochs(per, elapsed, reference, minutes, fp32, procs=procs, n=imgs))
        # under half the schedule's: a machine busy for a moment as the run started, which planned 1 epoch where 39 fitted
        # (benchmarks/README.md); timed again while a timing leaves most of the minutes, and the last one was a fifth faster than
        # the one before (a machine busy throughout is as slow again). Every process times again or none: each fit is data-parallel
        if i==RETIME or not broadcast_obj(short_of(fit, reference) and took < (minutes*60 - elapsed)/3 and (i==0 or faster)): break
        if rank_distrib()==0: print(f"{fit} epochs fit at {per[0]*1e3:.1f} ms a training image, under half the schedule's {reference}: timed again", flush=True)
        again,took = _timed(learn)
        elapsed,faster = elapsed + took,again[0] < .8*per[0]
        per = min(per, again) # the faster: `KeepBudget` compresses the epochs if they run slower, and a held-up timing is never faster
    n = max(1, fit - (freeze_epochs or 0))
    # a data set larger than the default one takes as much longer as its epochs do, and may: `KeepBudget` ends it that much later
    epoch = _epoch_seconds(per, data, procs)
    scale = epoch/_epoch_seconds(per, imgs, procs)
    if rank_distrib()==0:
        # a run given more minutes than that many epochs take ends sooner: said, or `--minutes 15` looks like a 15-minute run
        most = f", and at most {MAX_SCALE} times that, as far as more epochs were measured to help" if fit>=MAX_SCALE*reference else ''
        # and one that will take longer says so: a set 5 times the default's took 25 minutes after "25 epochs fit 5 minutes"
        longer = (f". An epoch of these {sum(data):,} images takes {scale:.1f} times the default set's {sum(YARDSTICK):,}: the run will take about "
                  f"{_minutes(elapsed + fit*epoch + finish_seconds(per, fp32, data))} minutes") if scale>1.05 else ''
        print(f"{n} epochs fit {minutes:g} minutes on this machine (a training image {per[0]*1e3:.1f} ms, "
              f"a validation image {per[1]*1e3:.1f} ms{f' in each of {procs} processes' if procs>1 else ''}{f', the fastest of {i+1} timings' if i else ''}; "
              f"the schedule's {reference}{most}){longer}{hint}")
    # the fit is given the most epochs allowed, and planned for `n`: as told `n` unless they run faster than timed
    top,now = max(n, MAX_SCALE*reference - (freeze_epochs or 0)),time.time()
    return n,KeepBudget(now + scale*_epochs_seconds(per, elapsed, minutes, KEEP, fp32, imgs), timed=epoch, plan=n if n < top else None, most=top,
                        fill=now + scale*_epochs_seconds(per, elapsed, minutes, MARGIN, fp32, imgs))
