"""On a CUDA machine: train and predict on the GPU with fastai's `to_fp16`, and record the numbers.

`python benchmarks/gpu_check.py OUT_DIR` writes `gpu.json` there. Not part of the tests: CI has no GPU."""
import json, sys, time, warnings, pandas as pd, torch
from pathlib import Path
from fastcore.script import call_parse
from fastai.vision.all import TensorImage, MixedPrecision
from flowers.synth import make_flowers
from flowers.train import train
from flowers.predict import load_counter

def _secs(s): return int(s.split(':')[0])*60 + int(s.split(':')[1])

@call_parse
def main(out:str, # Folder to write gpu.json into
         size:int=128, # Training and counting size in pixels
         n:int=2000, # Synthetic training images
         epochs:int=14, # Training epochs
        ):
    "Train the default recipe at `size` px on CUDA, then time inference; results to `out/gpu.json`"
    warnings.filterwarnings('ignore')
    if not torch.cuda.is_available(): print('gpu_check.py: no CUDA device here; run it on a machine with an NVIDIA GPU', file=sys.stderr); sys.exit(2)
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, size=size, n_images=n, epochs=epochs)
    data,run = Path('/tmp/gpu-data'),Path('/tmp/gpu-run')
    t = time.time(); make_flowers(data, n=n, size=size, show_progress=False); res['generate_s'] = round(time.time()-t, 1)
    t = time.time()
    learn = train(data, out=run, overwrite=True, size=size, bs=64, epochs=epochs, pretrained='no', workers=8)
    res['train_s'] = round(time.time()-t, 1)
    res['mixed_precision'] = any(isinstance(cb, MixedPrecision) for cb in learn.cbs)
    res['model_on'] = str(next(learn.model.parameters()).device)
    m = json.loads((run/'metrics.json').read_text())
    res.update(mae=round(m['mae'], 3), lr=m['lr'], recipe=m['recipe'])
    h = pd.read_csv(run/'history.csv')
    res['epoch_s_median'] = float(h['time'].map(_secs).median())
    res['train_img_s'] = round(m['n_train']/max(res['epoch_s_median'], 1), 1)
    imgs = sorted((data/'images').glob('*.jpg'))[:1024]
    for prec in ('fp16','fp32'):
        c = load_counter(run, precision=prec)
        c.predict_batch(imgs[:256], bs=256); torch.cuda.synchronize()
        t = time.time(); c.predict_batch(imgs, bs=256); torch.cuda.synchronize()
        res[f'predict_batch_{prec}_img_s'] = round(len(imgs)/(time.time()-t), 1)
        x = c.norm(TensorImage(torch.stack([c._tensor(i) for i in imgs[:256]]).cuda().float()/255)).as_subclass(torch.Tensor).contiguous(memory_format=c.fmt)
        dtype = torch.float16 if prec=='fp16' else None
        with torch.inference_mode(), torch.autocast('cuda', dtype=dtype, enabled=dtype is not None):
            c.model(x); torch.cuda.synchronize(); t = time.time()
            for _ in range(10): c.model(x)
            torch.cuda.synchronize()
        res[f'raw_forward_{prec}_img_s'] = round(2560/(time.time()-t), 1)
        res[f'counter_device_{prec}'] = str(c.device)
    (out/'gpu.json').write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))

