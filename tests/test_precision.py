import pytest, torch
from fastai.vision.all import MixedPrecision
from flowers.data import count_dls
from flowers.errors import FlowersError
from flowers.learner import count_learner
from flowers.precision import *

@pytest.fixture(scope='module')
def learn(flower_data): return count_learner(count_dls(flower_data[1], size=32, bs=8), pretrained=False)

def _conv_dtypes(learn):
    "Records the dtype and memory layout of the first convolution's output, per call"
    seen = []
    h = learn.model[0][0].register_forward_hook(lambda m,i,o: seen.append((o.dtype, o.is_contiguous(memory_format=torch.channels_last))))
    return seen,h

def test_bf16_training(learn):
    set_precision(learn, 'bf16')
    seen,h = _conv_dtypes(learn)
    try:
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    finally: h.remove()
    assert seen and all(s==(torch.bfloat16, True) for s in seen) # training and validation batches
    assert all(p.dtype==torch.float32 and p.is_contiguous() for p in learn.model.parameters()) # fp32 master weights, plain layout after
    assert not torch.is_autocast_enabled('cpu')
    to_fp32(learn)
    assert not any(isinstance(cb, (BF16Training, MixedPrecision)) for cb in learn.cbs)
    seen,h = _conv_dtypes(learn)
    try: learn.validate()
    finally: h.remove()
    assert seen and all(s[0]==torch.float32 for s in seen)

def test_fp32_trains_channels_last_on_a_cpu(learn):
    "oneDNN's convolutions are faster in NHWC (benchmarks/bench.py); the weights go back to the usual layout after the fit"
    set_precision(learn, 'fp32')
    seen,h = _conv_dtypes(learn)
    try:
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    finally: h.remove()
    assert seen and all(s==(torch.float32, True) for s in seen)
    assert all(p.is_contiguous() for p in learn.model.parameters())
    to_fp32(learn)
    assert not any(isinstance(cb, ChannelsLastFit) for cb in learn.cbs)

def test_auto_precision():
    assert auto_precision('cpu')==('bf16' if bf16_cpu() else 'fp32')

@pytest.mark.parametrize('p,msg', [('fp8', 'precision must be auto, fp32, bf16, fp16'), ('fp16', 'fp16 needs a CUDA GPU')])
def test_bad_precision(learn, p, msg):
    with pytest.raises(FlowersError, match=msg): set_precision(learn, p)
