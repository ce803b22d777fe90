"""Precision and memory layout where the hardware gains from them: bf16 on CPUs with native bf16, fp16 on CUDA, NHWC on CPUs."""
import torch
from fastai.vision.all import *
from fastai.callback.channelslast import ChannelsLast
from .settings import PRECISIONS, check_precision

__all__ = ['PRECISIONS', 'bf16_cpu', 'auto_precision', 'check_precision', 'resolve_precision', 'ChannelsLastFit', 'BF16Training', 'set_precision', 'to_fp32']


def bf16_cpu() -> bool:
    "Does this CPU run bfloat16 matrix work natively (AVX512-BF16 or AMX)?"
    try: return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError): return False

def auto_precision(device) -> str:
    "fp16 on CUDA, bf16 on CPUs that support it (measured 2x here, within 0.05 heads of fp32), else fp32"
    return 'fp16' if torch.device(device).type=='cuda' else 'bf16' if bf16_cpu() else 'fp32'

class ChannelsLastFit(ChannelsLast):
    "fastai's `ChannelsLast` for the fit only: afterwards the weights are back in the usual layout, as export and safetensors expect"
    def after_fit(self): self.learn.model.to(memory_format=torch.contiguous_format)

class BF16Training(Callback):
    "bf16 autocast for training and validation; fastai's `MixedPrecision` is CUDA-only"
    order = MixedPrecision.order
    def before_fit(self): self.autocast = torch.autocast(torch.device(self.dls.device or 'cpu').type, dtype=torch.bfloat16) # 'cpu' given as a string too
    def before_batch(self): self.autocast.__enter__()
    def after_pred(self):
        # loss and metrics in fp32 (backward follows the forward's dtypes); bf16 has fp32's range, so no loss scaling
        self.autocast.__exit__(None, None, None)
        self.learn.pred = to_float(self.pred)

def resolve_precision(precision, # 'auto', 'fp32', 'bf16' or 'fp16' (CUDA)
                      device, # Where training runs
                     ) -> str:
    "`precision` checked for `device`, with 'auto' replaced by `auto_precision`"
    check_precision(precision, device)
    return auto_precision(device) if precision=='auto' else precision

def set_precision(learn, # The `Learner` to train
                  precision='auto', # 'auto', 'fp32', 'bf16' or 'fp16' (CUDA)
                 ) -> str:
    "Train `learn` in `precision` ('auto': `auto_precision` of its device); returns the one used"
    device = learn.dls.device or 'cpu'
    precision = resolve_precision(precision, device)
    if precision=='fp16': learn.to_fp16() # load_learner undoes it on CPU
    if precision=='bf16': learn.add_cb(BF16Training())
    # oneDNN's CPU convolutions want NHWC (conv outputs follow the weights' layout), in fp32 too: a plain step 15% faster here, whole epochs 3-10% (README)
    if torch.device(device).type=='cpu': learn.add_cb(ChannelsLastFit())
    return precision

def to_fp32(learn):
    "Remove what `set_precision` added, so that the exported `Learner` and its reports are plain fp32"
    learn.model.to(memory_format=torch.contiguous_format) # a fit that stopped with an error may have left NHWC behind
    return learn.remove_cbs([BF16Training, MixedPrecision, ChannelsLast])
