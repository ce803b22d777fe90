"""What a training run leaves behind: metrics, predictions, history and plots."""
import io, json, math, sys, numpy as np, pandas as pd
import matplotlib.pyplot as plt
from pathlib import Path
from fastai.vision.all import *
from .atomic import atomic_path, atomic_text, write_table
from .images import open_image, fit_size
from .density import CountMapHead
from .counter import Counter
from .settings import LOSS_PLOT, FIT_PLOT, WORST_PLOT

__all__ = ['save_fig', 'count_metrics', 'interval_metrics', 'valid_predictions', 'plot_predicted_vs_true', 'show_count_map', 'map_rgba', 'map_png', 'PICTURE_SIDE', 'save_count_map', 'plot_worst', 'versions', 'write_report']

def save_fig(fig, fname, dpi=100):
    "Save `fig` to `fname` atomically, and close it"
    with atomic_path(fname) as tmp: fig.savefig(tmp, dpi=dpi, bbox_inches='tight')
    plt.close(fig)

def count_metrics(pred, targ) -> dict:
    "MAE, RMSE, R², bias (mean of predicted - true) and MAE relative to the mean count"
    pred,targ = np.asarray(pred, np.float64),np.asarray(targ, np.float64)
    err = pred - targ
    ss = ((targ - targ.mean())**2).sum()
    return dict(mae=float(np.abs(err).mean()), rmse=float(np.sqrt((err**2).mean())),
                r2=float(1 - (err**2).sum()/ss) if ss>0 else float('nan'), bias=float(err.mean()),
                relative_mae=float(np.abs(err).mean()/targ.mean()) if targ.mean()>0 else float('nan'))

def valid_predictions(learn, # A trained count `Learner`
                      fn_col='image', # Column holding image file names
                     ) -> pd.DataFrame:
    "Validation images with true and predicted counts and the error, worst first"
    preds,targs = learn.get_preds(ds_idx=1)
    df = pd.DataFrame({'image': list(learn.dls.valid.items[fn_col]), 'count': targs.numpy().ravel(),
                       'predicted': preds.numpy().ravel()})
    df['error'] = df['predicted'] - df['count']
    return df

def plot_predicted_vs_true(preds:pd.DataFrame, fname=None):
    "Scatter of predicted against true counts with the ideal line; saved to `fname`, or returned to show"
    fig,ax = plt.subplots(figsize=(5,5))
    ax.scatter(preds['count'], preds['predicted'], s=12, alpha=.6)
    hi = max(preds['count'].max(), preds['predicted'].max())*1.05
    ax.plot([0,hi], [0,hi], 'k--', lw=1)
    ax.set(xlabel='true count', ylabel='predicted count', xlim=(0,hi), ylim=(0,hi),
           title=f"validation: MAE {preds['error'].abs().mean():.2f}")
    if fname is None: return fig
    save_fig(fig, fname)

def show_count_map(img, # The image, as `open_image` gives it
                   cmap:np.ndarray=None, # Its count map (`Counter.count_map`), or None for the photo alone
                   title=None, # Title (default: the map's total)
                   ax=None, # Axes to draw on (default: a new figure)
                   alpha=0.55, # Opacity of the map where it counts most
                  ):
    "The photo with its count map over it, more opaque where more is counted; returns the axes"
    title = title if title is not None or cmap is None else f'{cmap.sum():.1f}'
    w,h = img.size
    img,cmap = _for_picture(img, cmap)
    ax = show_image(img, ax=ax)
    if title is not None: ax.set_title(title, parse_math=False) # a file name such as 'plot$1_$.jpg' is no formula to typeset, and failed to draw
    # in the photo's own pixels, however small it is drawn, so that points in them (true head centres, say) land where they are;
    # and a smaller map (`max_side`) over the whole photo: it used to sit in its top left corner
    whole = (-.5, w-.5, h-.5, -.5)
    ax.images[-1].set_extent(whole)
    if cmap is not None and cmap.max() > 0: ax.imshow(map_rgba(cmap, alpha), extent=whole)
    return ax

PICTURE_SIDE = 800 # pixels on the longer side of a photo or map as drawn, at most: 4 inches at 200 dpi, the most `save_count_map` uses

def _for_picture(img, cmap, side=PICTURE_SIDE):
    "`img` and `cmap` shrunk to at most `side` pixels a side: a 12 MP photo's map coloured at full size took 4 GB to draw 800 pixels"
    if max(img.size) > side: img = img.resize(fit_size(img.size, side), Image.BILINEAR)
    if cmap is not None and max(cmap.shape) > side:
        cmap = np.asarray(Image.fromarray(cmap.astype(np.float32), 'F').resize(fit_size(cmap.shape[::-1], side), Image.BOX))
    return img,cmap

def map_rgba(cmap:np.ndarray, # A count map (`Counter.count_map`)
             alpha=0.55, # Opacity where it counts most
             soften=0.025, # Blur for the eye, as a share of the map's longer side: a sharpened map's peaks are a pixel or two wide
            ) -> np.ndarray:
    "`cmap` coloured to lay over its photo: H x W x 4 floats in 0..1, more opaque where more is counted"
    from scipy.ndimage import gaussian_filter
    if soften: cmap = gaussian_filter(np.asarray(cmap, np.float32), soften*max(cmap.shape)) # the picture only: no count changes
    top = cmap.max() if cmap.max() > 0 else 1.
    rgba = plt.get_cmap('magma')(cmap/top)
    rgba[...,3] = alpha*np.sqrt(cmap/top) # transparency follows the map, so empty ground stays as photographed
    return rgba

def map_png(cmap:np.ndarray, alpha=0.55) -> bytes:
    "`map_rgba` of `cmap` as PNG bytes, for a page to lay over the photo"
    buf = io.BytesIO()
    Image.fromarray((map_rgba(cmap, alpha)*255).round().astype(np.uint8), 'RGBA').save(buf, 'PNG')
    return buf.getvalue()

def save_count_map(img, cmap, fname, title=None):
    "`show_count_map` saved as a picture in `fname`"
    w,h = img.size
    fig,ax = plt.subplots(figsize=(4*w/max(w,h), 4*h/max(w,h)))
    show_count_map(img, cmap, title, ax=ax)
    save_fig(fig, fname, dpi=max(72, min(200, max(w,h)/4)))

def plot_worst(preds:pd.DataFrame, img_dir, fname=None, n=9, counter=None):
    "The `n` validation images with the largest errors, titled true/predicted, with the count maps of `counter` when it makes them"
    worst = preds.reindex(preds['error'].abs().sort_values(ascending=False).index).head(n)
    axs = subplots(int(np.ceil(len(worst)/3)), 3, figsize=(9, 3.2*np.ceil(len(worst)/3)))[1].flatten()
    for ax,(_,r) in zip(axs, worst.iterrows()):
        img = open_image(Path(img_dir)/r['image'])
        show_count_map(img, counter.count_map(img, max_side=PICTURE_SIDE) if counter is not None else None, ax=ax, title=f"true {r['count']:g} / pred {r['predicted']:.1f}")
    for ax in axs[len(worst):]: ax.axis('off')
    if fname is None: return plt.gcf()
    save_fig(plt.gcf(), fname, dpi=72)

def interval_metrics(cal, # The model's `Calibration`, or None
                     preds:pd.DataFrame, # `valid_predictions`
                     level=0.9, # Interval level
                    ) -> dict:
    "Coverage and mean width of the `level` intervals on `preds`, and the share flagged unusual by count"
    if cal is None: return {}
    low,high = cal.interval(preds['predicted'], level)
    inside = (preds['count'] >= low) & (preds['count'] <= high)
    # on the images that calibrated it, coverage is at least `level` by construction; benchmarks/calibration.py measures fresh ones
    return dict(interval=dict(level=level, coverage=float(inside.mean()), mean_width=float((high-low).mean()), measured_on='validation (calibration) set'))

def versions() -> dict:
    "Versions of the libraries a model depends on"
    import fastai, fastcore, torchvision, PIL, flowers
    return dict(python=sys.version.split()[0], flowers=flowers.__version__, fastai=fastai.__version__,
                fastcore=fastcore.__version__, torch=torch.__version__, torchvision=torchvision.__version__, pillow=PIL.__version__)

def _json_safe(o):
    "`o` with NaN and infinities as None: strict JSON parsers reject a bare NaN"
    if isinstance(o, dict): return {k:_json_safe(v) for k,v in o.items()}
    if isinstance(o, (list,tuple)): return [_json_safe(v) for v in o]
    return None if isinstance(o, float) and not math.isfinite(o) else o

def write_report(learn, # The trained `Learner`
                 out, # Run folder
                 info:dict, # Run settings to record (lr, epochs, arch, ...)
                 fn_col='image', # Column holding image file names
                 preds=None, # `valid_predictions(learn, fn_col)`, where already made
                ) -> dict:
    "Write predictions.csv, metrics.json and the plots to `out`; returns the metrics"
    out = Path(out)
    if preds is None: preds = valid_predictions(learn, fn_col)
    write_table(preds, out/'predictions.csv')
    m = dict(count_metrics(preds['predicted'], preds['count']), n_train=len(learn.dls.train_ds), n_valid=len(learn.dls.valid_ds),
             **interval_metrics(getattr(learn, 'calibration', None), preds), **info, versions=versions())
    atomic_text(out/'metrics.json', json.dumps(_json_safe(m), indent=2))
    learn.recorder.plot_loss(); save_fig(plt.gcf(), out/LOSS_PLOT)
    plot_predicted_vs_true(preds, out/FIT_PLOT)
    counter = Counter.from_learner(learn, precision='fp32', device=learn.dls.device) if isinstance(learn.model[1], CountMapHead) else None
    plot_worst(preds, learn.dls.df.attrs['img_dir'] if hasattr(learn.dls, 'df') else '.', out/WORST_PLOT, counter=counter)
    return m
