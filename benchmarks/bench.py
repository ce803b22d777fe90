"""Speed and memory, side by side in one run: `python benchmarks/bench.py [--full] [--out benchmarks/results]`.

Writes `results.json` and `results.md`. Each part runs in its own process, so its peak memory is its own."""
import json, platform, resource, subprocess, sys, tempfile, time, warnings, torch
from functools import partial
from pathlib import Path
from multiprocessing import get_context
from fastcore.script import call_parse

def _best(f, n_img, reps=3):
    "Best images/s of `reps` runs of `f`, after one warm-up run"
    f(); best = 0.
    for _ in range(reps):
        t = time.perf_counter(); f(); best = max(best, n_img/(time.perf_counter()-t))
    return round(best, 1)

def _peak_mb(): return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, 1)

def _data(n, size=128):
    "A synthetic data set of `n` images, made once per run"
    from flowers.synth import make_flowers
    d = Path(tempfile.gettempdir())/f'flowers-bench-{n}-{size}'
    if not (d/'counts.csv').exists(): make_flowers(d, n=n, size=size, show_progress=False)
    return d

def infer(size, n=64, bs=64):
    "Inference images/s at `size` px: learn.predict loop, get_preds, Counter.predict_batch (fp32, bf16), raw forward"
    warnings.filterwarnings('ignore')
    from fastai.vision.all import TensorImage
    from flowers.data import count_dls
    from flowers.learner import count_learner
    from flowers.predict import Counter, bf16_cpu
    d = _data(n)
    learn = count_learner(count_dls(d/'counts.csv', size=size, bs=8, verify=False), pretrained=False)
    imgs = sorted((d/'images').glob('*.jpg'))
    c32 = Counter.from_learner(learn, precision='fp32')
    x = c32.norm(TensorImage(torch.stack([c32._tensor(i) for i in imgs]).float()/255)).as_subclass(torch.Tensor)
    def raw(m, x, dtype=None):
        with torch.inference_mode(), torch.autocast('cpu', dtype=dtype, enabled=dtype is not None):
            for i in range(0, len(x), bs): m(x[i:i+bs])
    r = {}
    with learn.no_bar():
        r['learn.predict loop'] = _best(lambda: [learn.predict(i) for i in imgs[:16]], 16, 1)
        r['fastai get_preds(test_dl)'] = _best(lambda: learn.get_preds(dl=learn.dls.test_dl(imgs, bs=bs)), n)
    r['Counter.predict_batch fp32'] = _best(lambda: c32.predict_batch(imgs, bs=bs), n)
    r['raw forward fp32'] = _best(partial(raw, c32.model, x), n)
    r['predict one image, fp32 (ms)'] = round(1000/_best(lambda: c32.predict(imgs[0]), 1, 10), 1)
    r['raw forward of one image, fp32 (ms)'] = round(1000/_best(partial(raw, c32.model, x[:1]), 1, 10), 1)
    if bf16_cpu():
        c16 = Counter.from_learner(learn, precision='bf16')
        r['Counter.predict_batch bf16'] = _best(lambda: c16.predict_batch(imgs, bs=bs), n)
        r['raw forward bf16 + channels_last'] = _best(partial(raw, c16.model, x.contiguous(memory_format=torch.channels_last), torch.bfloat16), n)
    r['peak memory (MB)'] = _peak_mb()
    return r

def train_speed(size=64, n=640, bs=32):
    "Training images/s: a flowers epoch (fastai, augmentation, metrics) vs a plain PyTorch loop over the same model and batches"
    warnings.filterwarnings('ignore')
    import torch.nn.functional as F
    from flowers.data import count_dls
    from flowers.learner import count_learner
    d = _data(n)
    dls = count_dls(d/'counts.csv', size=size, bs=bs, verify=False)
    learn = count_learner(dls, pretrained=False)
    n_train = len(dls.train)*bs
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-3) # warm-up
        t = time.perf_counter(); learn.fit_one_cycle(1, 1e-3); fastai_s = time.perf_counter()-t
    with learn.no_bar(), learn.no_logging(): # the same epoch's validation, to take it out of the comparison
        t = time.perf_counter(); learn.validate(); valid_s = time.perf_counter()-t
    batches = [(x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)) for x,y in dls.train]
    m = learn.model.train()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    def plain():
        for x,y in batches:
            loss = F.mse_loss(m(x).flatten(), y); loss.backward(); opt.step(); opt.zero_grad()
    plain(); t = time.perf_counter(); plain(); plain_s = time.perf_counter()-t
    return {'flowers epoch (train part)': round(n_train/(fastai_s-valid_s), 1), 'plain PyTorch loop': round(n_train/plain_s, 1),
            'ratio (time flowers / plain)': round((fastai_s-valid_s)/plain_s, 2), 'size': size, 'bs': bs, 'peak memory (MB)': _peak_mb()}

def time_to_mae(target=1.0):
    "Seconds for the default `python -m flowers.train` to reach validation MAE <= `target`, from its history"
    import pandas as pd
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        subprocess.run([sys.executable, '-m', 'flowers.train', '--out', out], check=True, capture_output=True)
        total = time.perf_counter()-t
        h = pd.read_csv(Path(out)/'history.csv')
        m = json.loads((Path(out)/'metrics.json').read_text())
    secs = h['time'].map(lambda s: int(s.split(':')[0])*60+int(s.split(':')[1])).cumsum()
    hit = h.index[h['mae']<=target]
    return {'whole run (s)': round(total), 'final MAE': round(m['mae'], 3),
            f'epochs until MAE <= {target}': int(hit[0])+1 if len(hit) else None,
            f'fit seconds until MAE <= {target}': int(secs[hit[0]]) if len(hit) else None}

def _run(f, *args):
    "`f(*args)` in a fresh process"
    with get_context('spawn').Pool(1) as p: return p.apply(f, args)

def _markdown(res):
    lines = [f"CPU: {res['cpu']} ({res['threads']} threads), torch {res['torch']}", '']
    for part,vals in res['parts'].items():
        lines += [f'**{part}**', '', '| | |', '|---|---|'] + [f'| {k} | {v} |' for k,v in vals.items()] + ['']
    return '\n'.join(lines)

def _cpu():
    for l in Path('/proc/cpuinfo').read_text().splitlines() if Path('/proc/cpuinfo').exists() else []:
        if l.startswith('model name'): return l.split(':',1)[1].strip()
    return platform.processor() or platform.machine()

@call_parse
def main(out:str='benchmarks/results', # Folder for results.json and results.md
         full:bool=False, # Also time a whole default training run to MAE <= 1.0 (about 10 minutes)
        ):
    "Measure inference, training and memory side by side, and write JSON and a Markdown table"
    res = dict(cpu=_cpu(), threads=torch.get_num_threads(), torch=torch.__version__, parts={})
    for size in (128, 224): res['parts'][f'inference, {size} px (images/s unless noted)'] = _run(infer, size)
    res['parts']['training, 64 px (images/s)'] = _run(train_speed)
    if full: res['parts']['default training run'] = _run(time_to_mae)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out)/'results.json').write_text(json.dumps(res, indent=2))
    (Path(out)/'results.md').write_text(_markdown(res))
    print(_markdown(res))
