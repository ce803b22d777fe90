"""flowers: teach a ResNet to count things in images, with fastai."""
__version__ = '0.1.0'
import warnings
# fastai 2.8 scripts a few functions at import; torch 2.14 warns about it on every run, which users can't act on
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
__all__ = ['FlowersError', 'FlowersDataError', 'read_counts', 'count_block', 'count_dls', 'count_tfms', 'default_data',
           'flower_field', 'make_flowers', 'Counter', 'load_counter', 'open_image']
from .errors import FlowersError
from .images import open_image
from .data import FlowersDataError, read_counts, count_block, count_dls, count_tfms, default_data

_LAZY = dict(flower_field='synth', make_flowers='synth', Counter='predict', load_counter='predict')
def __getattr__(name):
    "Modules that are also CLIs load on first use: imported here eagerly, `python -m flowers.predict` would warn (runpy)"
    if name not in _LAZY: raise AttributeError(f"module 'flowers' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
