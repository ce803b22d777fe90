"""Will a training run, or a batch of counting, fit in memory? On a CPU the kernel kills a process that doesn't, without a word."""
import warnings, torch
from .errors import FlowersError
from .distributed import local_procs

__all__ = ['activation_bytes', 'free_memory', 'check_memory', 'layer_bytes', 'bs_in_memory', 'check_scaled']

# What a training step keeps for the backward pass, as a share of every layer's fp32 output, at the least: measured
# here in fp32 at 1.0 (resnet18 map, 256 px), in bf16 at 0.28-0.49 (resnet18 map and resnet50 pool, 512 and 1024 px,
# whole runs); lower bounds, so that the check refuses only runs that cannot fit
KEPT = dict(fp32=.75, bf16=.25, fp16=.25)
# What counting a batch holds at its peak, as a share of every layer's fp32 output: measured 0.25-0.29 (resnet18 map, 80 px,
# batches of 256 and 1024, fp32 and bf16); an upper bound, so that only batches that may not fit are made smaller
PEAK = .35
# What an image counted by tiles holds per pixel at the scale it is counted at: the resized picture and its tensor (3 bytes
# each), and its fine count map (4 bytes every 2 x 2 pixels)
SCALED_BYTES = 7
LONG_SCALED = 64e6 # pixels at that scale that take about a minute to count on 2 CPU cores

def activation_bytes(arch, # torchvision ResNet name
                     head, # 'map' or 'pool'
                     stride, # Input pixels per cell of the count map ('map')
                     context, # Dilated layers in the count map's head ('map')
                     size, # Input images are size x size
                     stem=2, # Input pixels per step of the body's first convolution
                    ) -> tuple:
    "fp32 bytes of every layer's output for one image of `size`, and the number of weights, counted without memory or arithmetic (PyTorch's meta device)"
    from .learner import get_arch
    from .density import count_model
    with torch.device('meta'):
        m = count_model(get_arch(arch), head, stride, context if head=='map' else 0, stem=stem, **(dict(y_range=(0,1)) if head=='pool' else {})).train()
    return layer_bytes(m, size, n=2), sum(p.numel() for p in m.parameters()) # 2: batch norm after pooling wants more than one

def free_memory(device) -> float|None:
    "Bytes `device` can still give: the GPU's free memory, or the kernel's MemAvailable; None where unknown"
    device = torch.device(device)
    if device.type=='cuda': return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open('/proc/meminfo') as f: return next(float(l.split()[1])*1024 for l in f if l.startswith('MemAvailable:'))
    except (OSError, StopIteration, ValueError, IndexError): return None

def check_memory(a, # The checked settings of `flowers.train.train`, with the schedule filled in
                 precision, # 'fp32', 'bf16' or 'fp16'
                 device, # Where training runs
                ):
    "Raise when training at `a.size` and `a.bs` would surely not fit: what one step keeps for the backward pass alone is more than is free"
    free = free_memory(device)
    if free is None: return
    act,n_params = activation_bytes(a.arch, a.head, a.stride, a.context, a.size, a.stem)
    # data-parallel processes on a CPU share its memory, where each GPU's is its own
    procs = local_procs() if torch.device(device).type=='cpu' else 1
    need = (act*a.bs*KEPT[precision] + 4*4*n_params)*procs # and the weights, their gradients and Adam's 2 moments
    if need <= free: return
    each = f" ({procs} processes on this machine, each --bs {a.bs})" if procs>1 else ''
    raise FlowersError(f"--size {a.size} with --bs {a.bs}: one training step would need at least {need/2**30:.1f} GB{each}, and this machine has "
                       f"{free/2**30:.1f} GB free. Lower --size or --bs (the memory grows with bs x size²; {a.size//2} px needs a quarter)")

def layer_bytes(model, # A network, on PyTorch's meta device (no memory, no arithmetic) or a real one (a forward pass: about 10 ms at 80 px)
                size, # Its input is size x size
                n=1, # Images to pass at once
               ) -> float:
    "fp32 bytes of every layer's output for one image of `size` through `model`"
    total,p = [0],next(model.parameters())
    def _add(mod, inp, out): total[0] += sum(o.numel() for o in (out if isinstance(out, (tuple,list)) else [out]) if torch.is_tensor(o))
    hooks = [m.register_forward_hook(_add) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad(): model(p.new_zeros(n, 3, size, size))
    finally:
        for h in hooks: h.remove()
    return total[0]*4/n

def bs_in_memory(bs, # Images a batch would count
                 per_image, # `layer_bytes` of one image
                 free, # Bytes free (`free_memory`), or None where unknown
                ) -> int:
    "`bs`, or the most images whose counting fits in half of `free`, with a warning"
    if free is None or bs*per_image*PEAK <= free/2: return bs
    most = max(1, int(free/2/(per_image*PEAK)))
    warnings.warn(f"--bs {bs}: counting that many at once would need about {bs*per_image*PEAK/2**30:.1f} GB, and {free/2**30:.1f} GB is free; counting {most} at a time")
    return most

def check_scaled(size, # (width, height) of the image as opened
                 scaled, # (width, height) it is counted at, by tiles
                 tile, # The `--tile` that scales it
                 free, # Bytes free (`free_memory`), or None where unknown
                ):
    "Raise where counting an image by tiles at `scaled` would need more than half of `free`, and warn where it takes minutes: a `--tile` far below the heads' size enlarges it"
    # `--tile 16` read as "16 tiles" enlarged a 24 MP photo 5 times a side, to 600 MP: 7 GB, and minutes for one count
    need = SCALED_BYTES*scaled[0]*scaled[1]
    grows = f"--tile {tile}: counting this {size[0]} x {size[1]} image by tiles enlarges it to {scaled[0]} x {scaled[1]} pixels"
    what = "--tile is how many of the image's pixels one model input shows, not a number of tiles"
    if free is not None and need > free/2:
        raise FlowersError(f"{grows}, which needs {need/2**30:.1f} GB, and {free/2**30:.1f} GB is free. {what}: about the side of a patch that holds as many heads as a training image")
    if scaled[0]*scaled[1] > max(LONG_SCALED, size[0]*size[1]): warnings.warn(f"{grows}, which takes a while; {what}") # said while it counts, not after
