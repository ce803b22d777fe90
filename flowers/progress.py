"""Progress bars where a person watches (terminal, notebook); plain lines where output goes to a file or pipe."""
import contextlib, sys
import fastprogress.fastprogress as fp

__all__ = ['interactive', 'progress', 'plain_progress']

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
