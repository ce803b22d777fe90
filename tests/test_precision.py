import pytest, torch
from torch.amp import GradScaler, autocast
from fastai.vision.all import MixedPrecision, Callback, L
from flowers.data import count_dls
from flowers.errors import FlowersError
from flowers.learner import count_learner
from flowers.precision import *

@pytest.fixture(scope='module')
def learn(flower_data): return count_learner(count_dls(flower_data[1], size=32, bs=8, device=torch.device('cpu')), pretrained=False) # CPU paths, on a GPU machine too

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

class CPUHalf(MixedPrecision):
    "fastai's `MixedPrecision`, which is CUDA-only, with its fp16 autocast and loss scaling on the CPU: a GPU's fp16 training, here"
    def before_fit(self): self.autocast,self.learn.scaler,self.scales = autocast('cpu', dtype=torch.float16),GradScaler('cpu', **self.kwargs),L()

class ExtentSteps(Callback):
    "Records, after each step, whether the extent layer's weights are finite, and the loss scale"
    order = MixedPrecision.order+1
    def before_fit(self): self.seen = []
    def after_step(self):
        x = self.learn.point_supervision.extent
        self.seen.append((bool(torch.isfinite(x.weight).all()), self.learn.scaler.get_scale(), x.weight.detach().clone()))

def test_fp16_loss_scaling_keeps_the_extent_layer_finite(flower_data):
    "A GPU's default run trained in fp16 to NaN from its first step: the loss scale's overflow stepped the extent layer, which is outside the network, to NaN"
    learn = count_learner(count_dls(flower_data[1], size=32, bs=8, device='cpu'), pretrained=False)
    seen = ExtentSteps()
    # a scale that overflows fp16's gradients at once, as a GPU run's first steps do; cut by 2**10 (not 2) at each overflow, to fit in a few steps
    learn.add_cbs([CPUHalf(init_scale=2.**40, backoff_factor=2.**-10), seen])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    finite,scales,ws = zip(*seen.seen)
    assert scales[0] < 2.**40 and scales[-1] < scales[0] # overflows happened, and steps were skipped
    assert all(finite) and all(torch.isfinite(torch.tensor(v)).all() for v in learn.recorder.values[-1][:2])
    assert not torch.equal(ws[0], ws[-1]) # and the layer learned once the scale fit
