"""flowers: teach a ResNet to count things in images, with fastai."""
__version__ = '0.1.0'
from .data import FlowersDataError, read_counts, count_block, count_dls, count_tfms, default_data
from .synth import flower_field, make_flowers
