"""Train a counting model: `python -m flowers.train` (see `--help`)."""
import sys, time
from pathlib import Path
from fastcore.basics import AttrDict
from fastcore.meta import delegates
from fastcore.script import call_parse
from .errors import user_errors
from .settings import MAP_STRIDE, MINUTES, OLDER, check_args, check_lr, check_unused, find_csv, resume_state
# torch and fastai load only once the settings are good (`flowers.fitting`): a bad command line is refused at once, not after ~10 s

__all__ = ['find_csv', 'check_lr', 'train']

_MOVED = ('DEFAULT_LR', 'SCRATCH_LR', 'find_lr', 'pick_lr', 'check_out', 'TrainingGuard', 'fit')
def __getattr__(name):
    "What `flowers.fitting` now holds, where code written before the split finds it"
    if name not in _MOVED: raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import fitting
    return getattr(fitting, name)

def train(data:str=None, # Folder with counts.csv, or a CSV file (default: the synthetic data set, generated if absent)
          img_dir:str=None, # Folder the image names are relative to (default: images/ beside the CSV, else its folder)
          fn_col:str='image', # CSV column with image file names
          label_col:str='count', # CSV column with counts
          out:str=None, # Run folder for the model and reports (default: models/run-DATE-TIME)
          arch:str='resnet18', # torchvision ResNet: resnet18, resnet34, resnet50, resnet101 or resnet152
          norm:str=None, # The first norm of each block of its layer1 to layer3: ibn (half instance norm, IBN-a) or bn; default: ibn from random init, bn from pretrained weights
          stem:int=None, # Input pixels per step of its first convolution: 2 (torchvision's), 3 or 4 (images 1.5 or 2 times the size a side, the same maps after it); default from random init with the default --size: 3 in bf16, 4 on a GPU; else 2
          head:str='map', # map (counts per location, summed; learns head positions from points.csv when present) or pool (fastai's)
          stride:int=MAP_STRIDE, # Input pixels per cell of the count map (--head map): 8 or 16, 1.5 times that with --stem 3, twice with --stem 4
          context:int=None, # Dilated layers in the count map's head (--head map), so each place is counted in view of its surroundings: 0 to 4; default as for --size: 0 in fp32, 2 in bf16 or on a GPU
          size:int=None, # Images are resized to size x size; default: this machine's precision's, 64 in fp32, 120 in bf16 (--stem 3), 160 on a GPU (--stem 4): the maps of 64, 80 and 80 px; with another --stem, or pretrained weights, the size giving the same maps
          bs:int=None, # Batch size (per process when data-parallel); default as for --size: 16 in fp32, 32 in bf16 or on a GPU
          epochs:int=None, # Epochs (unfrozen epochs when fine-tuning); default: as many as fit --minutes on this machine (a set larger than the default one: the default set's, each longer), measured on a few batches first, in every process when data-parallel (the schedule's: 24 in fp32, 36 in bf16 or on a GPU)
          minutes:float=MINUTES, # The run time the default --epochs fit, data generation included; at most 3 times the schedule's epochs; fewer if they run slower than timed, more if faster (one cycle compressed into them, or stretched over them)
          freeze_epochs:int=1, # Epochs with the pretrained body frozen, before `epochs`
          lr:str=None, # Learning rate, or 'find' for lr_find's valley (default: 'find' when fine-tuning; from random init 3e-3 in fp32, 4e-3 in bf16 or on a GPU)
          valid_pct:float=0.2, # Share of images held out for validation (unless the CSV has an is_valid column)
          seed:int=42, # Random seed: the same seed gives the same split and metrics
          pretrained:str='auto', # ImageNet weights: auto (if available), yes (required) or no
          weights:str=None, # A local torchvision state dict for the body, instead of ImageNet weights
          loss:str='mse', # Loss: mse, l1 or huber
          workers:int=0, # Data-loading processes
          drop_bad:bool=False, # Skip bad CSV rows and images (listed in metrics.json) instead of stopping
          method:str='squish', # How images are made square: squish or pad
          precision:str='auto', # auto (bf16 on CPUs with native bf16, fp16 on CUDA), fp32, bf16 or fp16
          resume:str=None, # Run folder of an interrupted run to continue, with its settings and schedule
          overwrite:bool=False, # Train into an --out folder that holds a trained model or an interrupted run, replacing it
          aug=True, # Count-preserving augmentation (`count_tfms`): True, False, or a dict of its arguments
         ):
    "Train a ResNet to count, export it and write reports to `out`; returns the `Learner` (`learn.interrupted` if stopped by a signal)"
    t0 = time.time()
    args = {k:(str(v) if isinstance(v, Path) else v) for k,v in locals().items() if k not in ('t0','resume','overwrite')}
    state = resume_state(resume) if resume else None
    # what an older state lacks is filled by what it was then (OLDER), else by this call's settings
    if state: args,out = {**args, **OLDER, **state['args']},Path(resume)
    a = AttrDict(args)
    check_args(a)
    if not (state or overwrite): check_unused(out) # a second run into one folder replaced the first one's model, minutes later
    if a.data is not None: find_csv(a.data) # the user's own data is found now; the default set is made by one process, later
    from .fitting import run
    return run(a, out, state, args, t0)

if __name__=='__main__': sys.argv[0] = 'python -m flowers.train' # the usage line argparse prints

@call_parse
@delegates(train, but=['aug'])
def main(**kwargs):
    "Train a ResNet to count things in images, from a CSV of image,count rows"
    with user_errors():
        try: learn = train(**kwargs)
        except KeyboardInterrupt: print('Interrupted', file=sys.stderr); sys.exit(130)
    if learn.interrupted: sys.exit(130)
