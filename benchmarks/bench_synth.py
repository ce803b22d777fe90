"""Synthetic-image generation speed on one core: `python benchmarks/bench_synth.py [--n 500] [--size 128]`."""
import os, time, tempfile
os.environ.setdefault('OMP_NUM_THREADS', '1')
from fastcore.script import call_parse
from flowers.synth import make_flowers

@call_parse
def main(n:int=500, # Images to generate
         size:int=128, # Image size in pixels
        ):
    "Print images per second written by `make_flowers` (decoding, drawing, JPEG encoding and writing)"
    if hasattr(os, 'sched_setaffinity'): os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}) # one core
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        make_flowers(d, n=n, size=size, show_progress=False)
        dt = time.perf_counter() - t
    print(f'{n/dt:.0f} images/s at {size} px on one core ({n} images, {dt:.1f} s)')
