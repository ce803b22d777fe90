"""Count maps finer than the network's cells, for showing where it counted: shift-and-stitch, sharpened, spread over the image's pixels."""
import numpy as np, torch, torch.nn.functional as F
from torch import Tensor
from .settings import MAP_STRIDE

__all__ = ['spread_cells', 'FINE_STEP', 'fine_step', 'shifts', 'shifted', 'stitch', 'sharpen']

def spread_cells(cells, # (h, w) counts per cell of the map, over the model's square input
                 w, h, # Size of the image as opened
                 pad=False, # The input was the image padded to a square (`method='pad'`), not squished
                ) -> np.ndarray:
    "The cells' counts spread smoothly over the image's own pixels: (h, w) float32, summing to what the cells sum to"
    cells = torch.as_tensor(cells, dtype=torch.float32)
    side = max(w, h) if pad else None
    m = F.interpolate(cells[None,None], size=(side,side) if pad else (h,w), mode='bilinear', align_corners=False)[0,0]
    if pad: m = m[(side-h)//2:(side-h)//2+h, (side-w)//2:(side-w)//2+w] # fastai pads both sides equally
    total,got = float(cells.sum()),float(m.sum())
    return (m*(total/got) if got>0 else m).clamp_min(0).numpy().astype(np.float32)

FINE_STEP = 2 # input pixels per cell of the finer maps that `Counter.count_map` shows, with cells 8 apart: 2 beat 1 and 4 on localisation

def fine_step(stride) -> int:
    "Input pixels per cell of the finer map of a count map with cells `stride` apart: a quarter of a cell, as `FINE_STEP` is of 8"
    return max(1, stride*FINE_STEP//MAP_STRIDE) # 16 copies of an image, whatever its stem

def shifts(stride, step=FINE_STEP) -> list:
    "(dx, dy) of the shifted copies: `step/2`, `3 step/2`, ... below `stride` each way, so that the copies' cell centres fall on a grid `step` apart"
    return [(dx, dy) for dy in range(step//2, stride, step) for dx in range(step//2, stride, step)]

def shifted(x, # (3, h, w) model input, h and w multiples of `stride`
            stride, # Input pixels per cell of the map
            step=FINE_STEP, # Pixels between shifts: the finer map has a cell every `step` pixels
           ) -> list:
    "Copies of `x` moved down and right by each of `shifts`, mirrored at the edges, one cell larger"
    x = x[None].float()
    mode = 'reflect' if min(x.shape[-2:]) > stride else 'replicate' # mirroring needs more pixels than it adds
    return [F.pad(x, (dx, stride-dx, dy, stride-dy), mode=mode)[0].round().to(torch.uint8)
            for dx,dy in shifts(stride, step)]

def stitch(maps, # (k, h/stride+1, w/stride+1) maps of the `shifted` inputs, in their order
           h, w, # Size of the model input
           stride, step=FINE_STEP, # As for `shifted`
          ) -> Tensor:
    "One map with a cell every `step` pixels: each shifted map's cell at the place its centre falls on (shift-and-stitch, as in Long et al.'s FCN)"
    out = maps.new_zeros(h//step, w//step)
    for m,(dx,dy) in zip(maps, shifts(stride, step)):
        # cell j of a map shifted by d is centred at stride*j + stride/2 - d (pixel edges at whole numbers): that is the centre,
        # step*i + step/2, of cell i of the finer map, the grid that `spread_cells` spreads over the image
        ys,xs = torch.arange(m.shape[0])*stride + stride//2 - dy,torch.arange(m.shape[1])*stride + stride//2 - dx
        iy,ix = ((ys > 0) & (ys < h)).nonzero()[:,0],((xs > 0) & (xs < w)).nonzero()[:,0]
        out[((ys[iy]-step//2)//step)[:,None], ((xs[ix]-step//2)//step)[None]] = m[iy[:,None], ix[None]]
    return out

def sharpen(fine, # A `stitch`ed map
            stride, step=FINE_STEP, # As for `shifted`
            iters=10, # Richardson-Lucy iterations
           ) -> Tensor:
    "Undo the blur that stitching builds in: each shifted copy counts a head in the cell it lies in (`point_targets`), a box `stride` wide"
    n = stride//step # a head's count shows in the n x n fine cells whose shifted cells hold it, centred on the head to within a fine cell
    k = fine.new_full((1, 1, n, n), 1/n**2)
    a,b = n//2 - 1 + n%2,n//2 # the box's reach before and after the cell it spreads from
    r,e = fine[None,None].float(),fine[None,None].float().clamp_min(1e-12)
    for _ in range(iters): # the box, then its transpose (mirrored padding)
        e = e*F.conv2d(F.pad(r/F.conv2d(F.pad(e, (a, b, a, b)), k).clamp_min(1e-12), (b, a, b, a)), k)
    return e[0,0]
