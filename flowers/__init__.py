"""flowers: teach a ResNet to count things in images, with fastai."""
__version__ = '0.1.0'
import warnings
# fastai 2.8 scripts a few functions at import; torch 2.14 warns about it on every run, which users can't act on
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
__all__ = ['FlowersError', 'FlowersDataError', 'read_counts', 'count_block', 'count_dls', 'count_tfms', 'default_data',
           'flower_field', 'make_flowers', 'Counter', 'load_counter', 'open_image']

_LAZY = dict(FlowersError='errors', FlowersDataError='errors', open_image='images', read_counts='counts', count_block='data', count_dls='data',
             count_tfms='augment', default_data='data', flower_field='synth', make_flowers='synth', Counter='counter', load_counter='counter')
def __getattr__(name):
    "Each name loads its module on first use: `python -m flowers.synth` then needs no torch, and `flowers.train` checks its flags before torch loads"
    if name not in _LAZY: raise AttributeError(f"module 'flowers' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f'.{_LAZY[name]}', __name__), name)
