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
         size:int=None, # Training size in pixels (default: the no-flag run's, as `flowers.train` picks it on a GPU)
         n:int=2000, # Synthetic training images
         epochs:int=None, # Training epochs (default: the no-flag run's)
         bs:int=None, # Batch size (default: the no-flag run's)
         workers:int=8, # Data-loading processes
        ):
    "Train the default recipe on CUDA from fresh synthetic data, then time inference; results to `out/gpu.json`"
    warnings.filterwarnings('ignore')
    if not torch.cuda.is_available(): print('gpu_check.py: no CUDA device here; run it on a machine with an NVIDIA GPU', file=sys.stderr); sys.exit(2)
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    res = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, n_images=n, workers=workers)
    data,run = Path('/tmp/gpu-data'),Path('/tmp/gpu-run')
    # the default data set's own settings, so the run is the no-flag one apart from where the data lives
    t = time.time(); make_flowers(data, n=n, show_progress=False, replace=True); res['generate_s'] = round(time.time()-t, 1)
    t = time.time()
    learn = train(str(data), out=str(run), overwrite=True, size=size, bs=bs, epochs=epochs, workers=workers)
    res['train_s'] = round(time.time()-t, 1)
    res['mixed_precision'] = any(isinstance(cb, MixedPrecision) for cb in learn.cbs)
    res['model_on'] = str(next(learn.model.parameters()).device)
    m = json.loads((run/'metrics.json').read_text())
    res.update(mae=round(m['mae'], 3), lr=m['lr'], recipe=m['recipe'], settings={k:m.get(k) for k in ('size','bs','epochs','head','context','precision')})
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

