"""Speed and memory, side by side in one run: `python benchmarks/bench.py [--full] [--out benchmarks/results]`.

Writes `results.json` and `results.md`. Each part runs in its own process, so its peak memory is its own."""
import copy, json, platform, statistics, resource, subprocess, sys, tempfile, time, warnings, torch
from functools import partial
from pathlib import Path
from multiprocessing import get_context
from fastai.callback.core import Callback
from fastcore.script import call_parse

def _times(fs, rounds=7, own=False):
    "Seconds of each of `fs` (name -> function; with `own`, each returns its own) per round, after a warm-up; rounds interleave them, so a shared machine's noise hits all alike"
    for f in fs.values(): f()
    secs = {k:[] for k in fs}
    for _ in range(rounds):
        for k,f in fs.items():
            t = time.perf_counter(); r = f(); secs[k].append(r if own else time.perf_counter()-t)
    return secs

def _ratio(secs, a, b):
    "Median over rounds of the time of `a` over the time of `b`, each pair measured back to back"
    return round(statistics.median(x/y for x,y in zip(secs[a], secs[b])), 2)

def _peak_mb(): return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, 1)

def _data(n, size=128):
    "A synthetic data set of `n` images, made once per run"
    from flowers.synth import make_flowers, is_current
    d = Path(tempfile.gettempdir())/f'flowers-bench-{n}-{size}'
    if not is_current(d, n=n, size=size): make_flowers(d, n=n, size=size, show_progress=False)
    return d

def infer(size, n=128, bs=64):
    "Inference images/s at `size` px (two batches): learn.predict loop, get_preds, Counter.predict_batch (fp32, bf16), raw forward"
    warnings.filterwarnings('ignore')
    from fastai.vision.all import TensorImage
    from flowers.data import count_dls
    from flowers.learner import count_learner
    from flowers.predict import Counter
    from flowers.safe import input_spec
    from flowers.precision import bf16_cpu
    d = _data(n)
    learn = count_learner(count_dls(d/'counts.csv', size=size, bs=8, verify=False), pretrained=False)
    imgs = sorted((d/'images').glob('*.jpg'))
    c32 = Counter.from_learner(learn, precision='fp32')
    x = c32.norm(TensorImage(torch.stack([c32._tensor(i) for i in imgs]).float()/255)).as_subclass(torch.Tensor)
    def raw(m, x, dtype=None):
        with torch.inference_mode(), torch.autocast('cpu', dtype=dtype, enabled=dtype is not None):
            for i in range(0, len(x), bs): m(x[i:i+bs])
    fs = {'learn.predict loop': lambda: [learn.predict(i) for i in imgs[:16]],
          'fastai get_preds(test_dl)': lambda: learn.get_preds(dl=learn.dls.test_dl(imgs, bs=bs)),
          'Counter.predict_batch fp32': lambda: c32.predict_batch(imgs, bs=bs),
          'raw forward fp32': partial(raw, c32.model, x),
          'predict one image, fp32 (ms)': lambda: c32.predict(imgs[0]),
          'raw forward of one image, fp32 (ms)': partial(raw, c32.model, x[:1])}
    if bf16_cpu():
        c16 = Counter.from_spec(copy.deepcopy(learn.model), input_spec(learn), precision='bf16') # a copy: c32 keeps the plain layout
        fs['Counter.predict_batch bf16'] = lambda: c16.predict_batch(imgs, bs=bs)
        fs['raw forward bf16 + channels_last'] = partial(raw, c16.model, x.contiguous(memory_format=torch.channels_last), torch.bfloat16)
    with learn.no_bar(): secs = _times(fs)
    r = {k:(round(1000*min(t), 1) if '(ms)' in k else round((16 if 'learn.predict' in k else n)/min(t), 1)) for k,t in secs.items()}
    # speed ratios: medians of back-to-back pairs, steadier than ratios of bests on a shared machine
    r['predict_batch / raw forward, fp32 (speed)'] = _ratio(secs, 'raw forward fp32', 'Counter.predict_batch fp32')
    r['predict one / raw forward of one, fp32 (time)'] = _ratio(secs, 'predict one image, fp32 (ms)', 'raw forward of one image, fp32 (ms)')
    if bf16_cpu(): r['predict_batch bf16 / fp32 (speed)'] = _ratio(secs, 'Counter.predict_batch fp32', 'Counter.predict_batch bf16')
    r['peak memory (MB)'] = _peak_mb()
    return r

class TrainTime(Callback):
    "Seconds of the training part of each epoch, data loading and batch transforms included, validation not"
    def before_fit(self): self.secs = 0.
    def before_train(self): self.t = time.perf_counter()
    def after_train(self): self.secs += time.perf_counter()-self.t

def _matmul_rate(n=2048, rounds=7):
    "The machine's fp32 GFLOP/s on a large matrix product: about as fast as its cores multiply"
    a,b = torch.randn(n, n),torch.randn(n, n)
    return round(2*n**3/min(_times({'mm': lambda: a@b}, rounds)['mm'])/1e9)

def _step_flops(m, x):
    "FLOPs of a forward and backward of `m` on the batch `x`, as torch counts them"
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc: m(x).float().sum().backward()
    m.zero_grad()
    return fc.get_total_flops()

def train_speed(size=None, n=640, bs=None, arch=None, rounds=5):
    "Training images/s of the fp32 schedule's network (default: `train`'s arch): a flowers epoch (fastai, augmentation, metrics) vs a plain PyTorch loop over the same model and batches, in fp32 and bf16; and the plain loop's GFLOP/s against the machine's"
    warnings.filterwarnings('ignore')
    import inspect
    from flowers.train import train
    dflt = inspect.signature(train).parameters
    from flowers.settings import SCHEDULES, run_defaults
    # the network a no-flag fp32 run trains (its norm, stem and head), not `count_learner`'s defaults
    sched = run_defaults(SCHEDULES['fp32'], size=size)
    size,bs,arch = sched['size'],bs or sched['bs'],arch or dflt['arch'].default
    import torch.nn.functional as F
    from flowers.data import count_dls
    from flowers.learner import count_learner
    from flowers.precision import set_precision, bf16_cpu
    d = _data(n)
    dls = count_dls(d/'counts.csv', size=size, bs=bs, verify=False)
    n_train = len(dls.train)*bs
    batches = [(x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor)) for x,y,*_ in dls.train] # and head positions, which the plain loop ignores
    def plain(m, opt, dtype):
        t = time.perf_counter()
        for x,y in batches:
            with torch.autocast('cpu', dtype=dtype, enabled=dtype is not None): p = m(x).flatten()
            F.mse_loss(p.float(), y).backward(); opt.step(); opt.zero_grad()
        return time.perf_counter()-t
    def flowers(learn):
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
        return learn.train_time.secs
    fs = {}
    def _plain(learn, dtype, fmt):
        m = copy.deepcopy(learn.model).train().to(memory_format=fmt)
        return partial(plain, m, torch.optim.Adam(m.parameters(), 1e-3), dtype)
    # each variant keeps its own model and optimizer: optimizer state in one memory layout and weights in another run slowly
    for p in ['fp32'] + (['bf16'] if bf16_cpu() else []):
        learn = count_learner(dls, arch, context=sched['context'], pretrained=False, norm=sched['norm'], stem=sched['stem'], cbs=TrainTime())
        set_precision(learn, p) # which trains in channels_last on a CPU
        fs[p,'flowers'],fs[p,'plain'] = partial(flowers, learn),_plain(learn, torch.bfloat16 if p=='bf16' else None, torch.channels_last)
        if p=='fp32': fs[p,'plain NCHW'] = _plain(learn, None, torch.contiguous_format)
    secs = _times(fs, rounds, own=True) # the warm-up also fills the image cache
    r = {}
    for p in dict.fromkeys(k[0] for k in fs):
        r.update({f'flowers epoch, {p}': round(n_train/min(secs[p,'flowers']), 1), f'plain PyTorch loop, {p}': round(n_train/min(secs[p,'plain']), 1),
                  f'time flowers / plain, {p}': _ratio(secs, (p,'flowers'), (p,'plain'))})
    r.update({'plain PyTorch loop, fp32, NCHW': round(n_train/min(secs['fp32','plain NCHW']), 1),
              'time channels_last / NCHW, fp32 plain loop': _ratio(secs, ('fp32','plain'), ('fp32','plain NCHW'))})
    # how near the cores' limit a step runs: what is left to gain without a cheaper network or another machine
    x = batches[0][0].contiguous(memory_format=torch.channels_last)
    flops = _step_flops(copy.deepcopy(learn.model).train().to(memory_format=torch.channels_last), x)/len(x)
    r.update({'GFLOP a training image (forward and backward)': round(flops/1e9, 3),
              'plain PyTorch loop, fp32 (GFLOP/s)': round(flops*n_train/min(secs['fp32','plain'])/1e9),
              'matrix product, fp32 (GFLOP/s)': _matmul_rate()})
    return {**r, 'arch': arch, 'size': size, 'bs': bs, 'norm': sched['norm'], 'stem': sched['stem'], 'context': sched['context'], 'peak memory (MB)': _peak_mb()}

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

def _photo(f, src, d, w, h, quality):
    "One synthetic field as a camera photo: upscaled, sensor-like noise (one tile, added in C), and a 256 px copy"
    import numpy as np
    from PIL import Image, ImageChops
    noise = Image.fromarray(np.clip(np.random.default_rng(0).normal(128, 3, (512, 512, 3)), 0, 255).astype(np.uint8))
    tiles = Image.new('RGB', (w, h))
    for x in range(0, w, 512):
        for y in range(0, h, 512): tiles.paste(noise, (x, y))
    big = ImageChops.add(Image.open(src/'images'/f).convert('RGB').resize((w, h), Image.BICUBIC), tiles, offset=-128)
    big.save(d/'images'/f, quality=quality)
    big.resize((256, 192), Image.BILINEAR).save(d/'small'/f, quality=quality)

def _camera(n, w=4032, h=3024, quality=85):
    "`n` synthetic fields as 12 MP camera JPEGs, and the same at 256 px; made once"
    import pandas as pd
    from fastcore.parallel import parallel
    d = Path(tempfile.gettempdir())/f'flowers-camera-{n}'
    if not (d/'counts.csv').exists():
        src = _data(n, size=384)
        (d/'images').mkdir(parents=True, exist_ok=True); (d/'small').mkdir(exist_ok=True)
        df = pd.read_csv(src/'counts.csv')
        parallel(partial(_photo, src=src, d=d, w=w, h=h, quality=quality), df['image'], n_workers=2, progress=False)
        df.to_csv(d/'counts.csv', index=False)
    return d

def _counter(model=None, size=64):
    "A fp32 `Counter` of `model`, or of a small model trained here for 2 epochs: decoding agreement needs weights that react to the image"
    from flowers.data import count_dls
    from flowers.learner import count_learner
    from flowers.predict import Counter, load_counter
    if model: return load_counter(model, precision='fp32')
    learn = count_learner(count_dls(_data(640)/'counts.csv', size=size, bs=64, verify=False), pretrained=False)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 3e-3)
    return Counter.from_learner(learn, precision='fp32')

def camera(n=16, bs=16, model=None):
    "12 MP JPEGs through `Counter.predict_batch`: images/s, against the same images at 256 px and against full decoding"
    warnings.filterwarnings('ignore')
    import numpy as np
    from PIL import Image
    from fastai.vision.all import PILImage, image2tensor
    from flowers.images import to_rgb8
    d = _camera(n)
    c = _counter(model)
    big,small = sorted((d/'images').glob('*.jpg')),sorted((d/'small').glob('*.jpg'))
    def full(paths): # decode every pixel, then resize: what predict_batch did before decoding at the size needed
        return c._forward([image2tensor(c.resize(PILImage(to_rgb8(Image.open(p))), split_idx=1)) for p in paths])
    secs = _times({'12 MP': lambda: c.predict_batch(big, bs=bs), '256 px': lambda: c.predict_batch(small, bs=bs),
                   '12 MP, full decode': lambda: full(big)}, rounds=5)
    r = {f'predict_batch, {k} (images/s)': round(n/min(t), 1) for k,t in secs.items()}
    r['12 MP / 256 px (speed)'] = _ratio(secs, '256 px', '12 MP')
    r['decode at size / full decode (speed)'] = _ratio(secs, '12 MP, full decode', '12 MP')
    r['mean |count - full-decode count| (heads)'] = round(float(np.abs(c.predict_batch(big, bs=bs) - full(big)).mean()), 4)
    r['peak memory (MB)'] = _peak_mb()
    return r

def maps(n=16, model=None):
    "`--maps` on 12 MP photos: seconds a photo for its count and its count map picture, and the process's peak memory"
    warnings.filterwarnings('ignore')
    from flowers.predict import predict_table
    paths,c = sorted((_camera(n)/'images').glob('*.jpg')),_counter(model)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter(); predict_table(c, paths, maps=d, show_progress=False)
        return {'photos': n, 'seconds a photo': round((time.perf_counter()-t)/n, 2), 'peak memory (MB)': _peak_mb()}

def folder(n=1000, size=64, bs=64, model=None):
    "A folder of `n` 12 MP photos: prediction images/s, training's time to its first batch (pre-flight check included) and first epoch"
    warnings.filterwarnings('ignore')
    from flowers.data import count_dls
    from flowers.learner import count_learner
    from flowers.predict import predict_table
    d = _camera(n)
    paths = sorted((d/'images').glob('*.jpg'))
    c = _counter(model)
    t = time.perf_counter(); predict_table(c, paths, bs=bs, show_progress=False); pred = time.perf_counter()-t
    t = time.perf_counter()
    dls = count_dls(d/'counts.csv', size=size, bs=bs) # pre-flight check of every image, as `train` does
    next(iter(dls.train)); first = time.perf_counter()-t
    learn = count_learner(dls, pretrained=False)
    t = time.perf_counter()
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
    return {'photos': n, 'predict a folder (images/s)': round(n/pred, 1), 'training: seconds to the first batch': round(first, 1),
            'training: first epoch, cache fill included (s)': round(time.perf_counter()-t, 1), 'peak memory (MB)': _peak_mb()}

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
         photos:int=1000, # 12 MP photos in the whole-folder case (0 skips it)
         model:str=None, # Model for the camera cases (default: one trained here for 2 epochs)
        ):
    "Measure inference, training and memory side by side, and write JSON and a Markdown table"
    res = dict(cpu=_cpu(), threads=torch.get_num_threads(), torch=torch.__version__, parts={})
    for n in (128, 640): _data(n) # drawn here, with all cores: each part runs in a pool's worker
    _camera(16)
    if photos: _camera(photos)
    for size in (128, 224): res['parts'][f'inference, {size} px (images/s unless noted)'] = _run(infer, size)
    res['parts']['training, 64 px (images/s)'] = _run(train_speed)
    res['parts']['camera photos, 12 MP JPEG, 64 px model'] = _run(camera, 16, 16, model)
    res['parts']['count map pictures of camera photos (--maps), 64 px model'] = _run(maps, 16, model)
    if photos: res['parts'][f'a folder of {photos} camera photos, 64 px model'] = _run(folder, photos, 64, 64, model)
    if full: res['parts']['default training run'] = _run(time_to_mae)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out)/'results.json').write_text(json.dumps(res, indent=2))
    (Path(out)/'results.md').write_text(_markdown(res))
    print(_markdown(res))
