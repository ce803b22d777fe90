"""fastai's `learn.show_results()` and `Interpretation.plot_top_losses` for images labelled with a count."""
from fastai.vision.all import *
from plum import dispatch

__all__ = ['show_results', 'plot_top_losses']

def _num(o): return f'{float(np.asarray(o, dtype=float).ravel()[0]):.1f}' # a count, or a prediction decoded as a tuple of one

# fastai's own (TensorImage, object) method calls `show_results[object]`, which plum cannot do (fastai#4092);
# a count is a plain `Tensor`, so this more specific method is the one fastai picks for counting models
@dispatch
def show_results(x:TensorImage, y:Tensor, samples, outs, ctxs=None, max_n=9, nrows=None, ncols=None, figsize=None, **kwargs):
    "Each image with its true and predicted count"
    n = min(len(samples), max_n)
    if ctxs is None: ctxs = get_grid(n, nrows=nrows, ncols=ncols, figsize=figsize, title='true / predicted')
    for s,o,ctx in zip(samples[:n], outs[:n], ctxs):
        s[0].show(ctx=ctx, **kwargs)
        ctx.set_title(f'{_num(s[1])} / {_num(o[0])}')
    return ctxs

@dispatch
def plot_top_losses(x:TensorImage, y:Tensor, samples, outs, raws, losses, nrows=None, ncols=None, figsize=None, **kwargs):
    "The images with the largest losses, each with its predicted and true count and its loss"
    axs = get_grid(len(samples), nrows=nrows, ncols=ncols, figsize=figsize, title='predicted / true / loss')
    for ax,s,o,l in zip(axs, samples, outs, losses):
        s[0].show(ctx=ax, **kwargs)
        ax.set_title(f'{_num(o[0])} / {_num(s[1])} / {l.item():.2f}')
