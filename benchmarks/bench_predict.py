"""Inference speed, side by side on the same images and model: `python benchmarks/bench_predict.py [MODEL] [--n 64] [--size 128]`."""
import json, time, tempfile, warnings, numpy as np, torch
from pathlib import Path
from fastcore.script import call_parse
from fastai.vision.all import *
from flowers.data import count_dls, DATA_DIR
from flowers.learner import count_learner
from flowers.predict import Counter, load_counter
from flowers.synth import make_flowers

def _timed(f, n_img, reps=3):
    "Best images/s of `reps` runs of `f`, after one warm-up run"
    f()
    best = 0.
    for _ in range(reps):
        t = time.perf_counter(); f(); best = max(best, n_img/(time.perf_counter()-t))
    return best

def _model_at(size, model=None):
    "A `Counter` from `model`, or an untrained resnet34 at `size` px (the speed doesn't depend on the weights)"
    if model: return load_counter(model)
    dls = count_dls(DATA_DIR/'sample'/'counts.csv', size=size, bs=8)
    return Counter.from_learner(count_learner(dls, pretrained=False))

@call_parse
def main(model:str=None, # Run folder or export.pkl (default: an untrained resnet34)
         n:int=64, # Images to count
         size:int=128, # Image size, when no model is given
         bs:int=64, # Batch size
        ):
    "Print and return images/s for a `learn.predict` loop, `get_preds`, `Counter.predict_batch` and the raw forward"
    warnings.filterwarnings('ignore')
    c = _model_at(size, model)
    with tempfile.TemporaryDirectory() as d:
        make_flowers(d, n=n, size=c.size, show_progress=False)
        imgs = sorted(Path(d, 'images').glob('*.jpg'))
        x = torch.stack([c._tensor(i) for i in imgs]).float()/255
        x = c.norm(TensorImage(x))
        res = {}
        if c.learn is not None:
            with c.learn.no_bar(): # fastai's bars would cost it time, and clutter the output
                res['learn.predict loop'] = _timed(lambda: [c.learn.predict(i) for i in imgs], n, 1)
                res['get_preds(test_dl)'] = _timed(lambda: c.learn.get_preds(dl=c.learn.dls.test_dl(imgs, bs=bs)), n)
        res['Counter.predict_batch'] = _timed(lambda: c.predict_batch(imgs, bs=bs), n)
        def _raw():
            with torch.inference_mode(): [c.model(x[i:i+bs]) for i in range(0, n, bs)]
        res['raw forward (ready tensors)'] = _timed(_raw, n)
    for k,v in res.items(): print(f'{k:30s} {v:8.1f} img/s' if v else f'{k:30s}      n/a')
    return res
