"""Does `torch.compile` pay off here? `python benchmarks/compile_check.py` prints compile time and speed vs eager (results/compile.json).

Inference at 128 px (batch 64) and a training step at 64 px (batch 64), fp32 and bf16 autocast; best of 3."""
import json, time, warnings, torch, torch.nn.functional as F
from fastai.vision.all import create_vision_model, resnet34
from fastcore.script import call_parse

def _rate(f, n_img, reps=3):
    best = 0.
    for _ in range(reps):
        t = time.perf_counter(); f(); best = max(best, n_img/(time.perf_counter()-t))
    return round(best, 1)

def check(dtype=None, bs=64):
    "Compile seconds, and eager vs compiled images/s, for inference and a training step"
    fmt = torch.channels_last if dtype else torch.contiguous_format
    m = create_vision_model(resnet34, 1, pretrained=False).to(memory_format=fmt)
    x = torch.randn(bs,3,128,128).contiguous(memory_format=fmt)
    xt,y = torch.randn(bs,3,64,64).contiguous(memory_format=fmt),torch.randn(bs)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    r = {}
    for name,model in (('eager',m), ('compiled',torch.compile(m))):
        def infer():
            with torch.inference_mode(), torch.autocast('cpu', dtype=dtype, enabled=dtype is not None): model.eval()(x)
        def step():
            model.train()
            with torch.autocast('cpu', dtype=dtype, enabled=dtype is not None): p = model(xt).flatten()
            F.mse_loss(p.float(), y).backward(); opt.step(); opt.zero_grad()
        t = time.perf_counter(); infer(); r[f'{name} first inference call (s)'] = round(time.perf_counter()-t, 1)
        r[f'{name} inference 128 px (img/s)'] = _rate(infer, bs)
        t = time.perf_counter(); step(); r[f'{name} first training step (s)'] = round(time.perf_counter()-t, 1)
        r[f'{name} training 64 px (img/s)'] = _rate(step, bs)
    return r

@call_parse
def main():
    "Compile time and speed of torch.compile against eager, in fp32 and bf16 autocast, printed as JSON"
    warnings.filterwarnings('ignore')
    print(json.dumps({'fp32': check(), 'bf16': check(torch.bfloat16)}, indent=1))
