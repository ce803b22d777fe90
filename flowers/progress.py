"""Progress bars where a person watches (terminal, notebook); plain lines where output goes to a file or pipe."""
import contextlib, sys
import fastprogress.fastprogress as fp

__all__ = ['interactive', 'progress', 'plain_progress', 'epoch_lines']

def interactive() -> bool:
    "Is stdout a terminal or a notebook? (fastprogress's own check is always true: it doesn't call `isatty`)"
    return fp.IN_NOTEBOOK or bool(getattr(sys.stdout, 'isatty', lambda: False)())

def progress(gen, show=True, **kwargs):
    "A fastprogress bar over `gen` when someone can see it; else `gen` itself, with no stray bar characters"
    return fp.progress_bar(gen, leave=False, **kwargs) if show and interactive() and not fp.NO_BAR else gen

@contextlib.contextmanager
def plain_progress():
    "Progress bars when interactive; otherwise only fastai's line per epoch, flushed as it comes"
    old = fp.NO_BAR
    if not interactive():
        fp.NO_BAR = True
        if hasattr(sys.stdout, 'reconfigure'): sys.stdout.reconfigure(line_buffering=True)
    try: yield
    finally: fp.NO_BAR = old

def _row(vals): return '  '.join(f'{v:<10.6f}' if isinstance(v, float) else f'{str(v):<10}' for v in vals)

@contextlib.contextmanager
def epoch_lines(learn):
    "fastai's bars when interactive; otherwise a header and one plain line per epoch (fastai's console bar writes stray block characters)"
    if interactive(): yield learn; return
    old,shown = learn.logger,[]
    def _log(vals):
        if not shown: print(_row(learn.recorder.metric_names)); shown.append(True)
        print(_row(vals), flush=True)
    learn.logger = _log
    try:
        with learn.no_bar(): yield learn
    finally: learn.logger = old # a local function must not reach the exported pickle
