"""A training run's settings: what each may be, and what an interrupted run saved. No torch or fastai here, so a bad command line is refused at once."""
import itertools, json, os, time
from pathlib import Path
from .errors import FlowersError, FlowersDataError, check_int, check_seed

__all__ = ['ARCHS', 'NORMS', 'STEMS', 'HEAD_TYPES', 'MAP_CUTS', 'MAP_STRIDE', 'MAP_CONTEXT', 'MAX_CONTEXT', 'LOSS_NAMES', 'METHODS', 'PRECISIONS', 'PRETRAINED', 'MIN_TRAIN_SIZE', 'MIN_SIZE', 'MINUTES', 'OLDER',
           'FORMAT', 'RUN_PLOTS', 'LR_PLOT', 'LOSS_PLOT', 'FIT_PLOT', 'WORST_PLOT', 'STATE', 'CHECKPOINT', 'BEST', 'HISTORY', 'EXTENT', 'SCHEDULES', 'default_schedule', 'schedule_size', 'run_defaults', 'check_arch', 'check_norm', 'check_stem', 'check_head', 'check_context', 'check_loss', 'check_method', 'check_precision', 'check_pretrained',
           'check_lr', 'check_args', 'check_folder', 'check_unused', 'new_run_folder', 'find_csv', 'read_state', 'resume_state', 'model_file', 'decode_threads']

ARCHS = ('resnet18','resnet34','resnet50','resnet101','resnet152')
NORMS = ('ibn','bn') # the first norm of the body's blocks: half instance norm (IBN-a, `flowers.ibn`), or torchvision's batch norm
STEMS = (2,3,4) # input pixels per step of the body's first convolution: torchvision's 2, or 3 and 4 for 1.5 and 2 times the input a side at the same work after it
HEAD_TYPES = ('map','pool') # 'map': counts per location, summed; 'pool': fastai's pooled head with one output
MAP_CUTS = {8:-4, 16:-3} # input pixels per cell of the count map -> where a torchvision ResNet is cut: before layer3, or before layer4
MAP_STRIDE = 8 # the default: on held-out families at 64 px, stride 8 beat 16 (cheaper too: layer3 is dropped)
MAP_CONTEXT = 2 # dilated layers in the count map's head: at 96 px, held-out MAE and empty-field counts lower on all 3 held-out pairs (README)
MAX_CONTEXT = 4 # dilation 16 already reaches past a 96 px image's 12 x 12 cells
LOSS_NAMES = ('mse','l1','huber')
METHODS = ('squish','pad') # ways to make an image square that keep every head; cropping would cut some off
PRECISIONS = ('auto','fp32','bf16','fp16')
PRETRAINED = ('auto','yes','no')
MIN_TRAIN_SIZE = 32 # a ResNet halves its input five times: below this its last feature map is under one pixel
MIN_SIZE = 8 # pixels per side of an image (or a tile) to count; smaller ones can't show anything countable
MINUTES = 5 # the no-flag run's time, data generation included: the default --epochs are those that fit it (`flowers.budget`)
OLDER = dict(head='pool', stride=16, context=0, norm='bn', stem=2) # settings of runs saved before they were recorded
# The default input size, head, batch size and random-init learning rate, and the epochs that `flowers.budget` scales to this machine's
# minutes: what fitted a 5-minute default run (data generation included) on the 2-core machines measured, at the precision they train in. CPUs with native bf16 (AVX512-BF16, AMX) train about 4x faster than
# fp32-only ones, and GPUs faster still: spent on 80 px and 30 epochs with the head's context, validation MAE and empty-field counts were
# lower on all 3 held-out pairs than at 96 px and 20 epochs, held-out MAE a tie; at 64 px (an 8 x 8 map) the context was a tie that fp32
# machines have no time for. In bf16, batches of 32 run an epoch about a fifth faster than 16: 36 epochs of them at lr 4e-3, in less
# time than 30 of 16, counted less on empty fields in 6 runs of 6 and lower validation MAE in 6 of 6, held-out MAE a tie (README).
# IBN blocks in both: in fp32, 14 epochs of them take 15 of batch norm's time, with lower validation MAE and second-renderer MAE in
# 6 runs of 6 and held-out MAE in 4, but more empty ground counted in 6 (benchmarks/README.md). On a GPU, where time is no limit, the
# stem steps 4 pixels on 160 px images: the feature maps of 80 px with twice the pixels a side. In bf16 (36 epochs, 3 held-out pairs x
# 2 seeds) it lowered held-out MAE in 5 runs of 6 and validation in 3, a tie on empty fields, the second renderer worse in 4; but its
# epochs take a fifth longer on a CPU: the no-flag run passed 5 minutes, and in 28 epochs it counted more empty ground. A CPU's stem
# steps 3 pixels on 120 px, the maps of 80 px in 2% more time: held-out MAE lower in 5 runs of 6 and validation in 5, but empty
# fields and the second renderer a little worse in 4 (README). Not in fp32, even with the epochs fitted to the minutes (`flowers.budget`),
# which pay for its time: on an EPYC without AVX-512, 22 epochs of it against 24 of the stem of 2 won on seed 0 and lost on seed 1
# (held-out MAE and empty fields worse on all 3 pairs there; benchmarks/README.md)
# The fp32 schedule's epochs are those its fitted no-flag runs trained on that EPYC (19 to 24; the 14 of the rounds before, fixed,
# took 3 minutes there): the reference for benchmarks, and what `--minutes` scales at most 3 times (`flowers.budget.MAX_SCALE`)
SCHEDULES = dict(fp32=dict(epochs=24, size=64, context=0, bs=16, lr=3e-3, norm='ibn', stem=2),
                 fast=dict(epochs=36, size=120, context=MAP_CONTEXT, bs=32, lr=4e-3, norm='ibn', stem=3),
                 gpu=dict(epochs=36, size=160, context=MAP_CONTEXT, bs=32, lr=4e-3, norm='ibn', stem=4))

def default_schedule(precision, # The precision training runs in: 'fp32', 'bf16' or 'fp16'
                     device=None, # Where it runs: a CUDA device has the GPU's schedule
                    ) -> dict:
    "`epochs`, `size`, `context`, `bs`, and the random-init `lr`, `norm` and `stem` of a default run in `precision` on `device`"
    if precision=='fp32': return SCHEDULES['fp32']
    return SCHEDULES['gpu' if str(device).startswith('cuda') else 'fast']

def schedule_size(schedule, # A `SCHEDULES` entry
                  stem, # The run's stem
                 ) -> int:
    "The schedule's input size for `stem`: the same feature maps, so about the same time, as its own stem's"
    return schedule['size']*stem//schedule['stem']

def run_defaults(schedule, # A `SCHEDULES` entry (`default_schedule`)
                 pretrained=False, # Does the body start from trained weights?
                 size=None, # The input size asked for, if any
                 stem=None, # The stem asked for, if any
                ) -> dict:
    "The settings of a run on `schedule`: its own, but batch norm and torchvision's stem for a pretrained body, and the size for the stem"
    # IBN and the stems of 3 and 4 were measured from random init: a pretrained body keeps what it learnt with; and the schedule's
    # stem comes with its size only: a size asked for is the input wanted, whose map a longer step would make coarser
    stem = stem or (schedule['stem'] if not pretrained and size is None else 2)
    return {**schedule, 'norm': 'bn' if pretrained else schedule['norm'], 'stem': stem, 'size': size or schedule_size(schedule, stem)}

FORMAT = 'flowers-count-model/1' # model.json's first field: what wrote it
LR_PLOT,LOSS_PLOT,FIT_PLOT,WORST_PLOT = 'lr_find.png','loss.png','predicted_vs_true.png','worst.png'
RUN_PLOTS = (LR_PLOT,LOSS_PLOT,FIT_PLOT,WORST_PLOT) # the pictures a run writes: no photos to count
STATE,CHECKPOINT,BEST,HISTORY = 'state.json','checkpoint.pth','best.pth','history.csv' # what an unfinished run keeps in its folder
EXTENT = 'extent.pth' # and `PointSupervision`'s extent layer, which is not in the network

def check_arch(arch):
    "Raise unless `arch` names one of `ARCHS` (or is a model function)"
    if not callable(arch) and arch not in ARCHS: raise FlowersError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")

def check_norm(norm):
    "Raise unless `norm` is None (the default for the run) or one of `NORMS`"
    if norm is not None and norm not in NORMS: raise FlowersError(f"unknown --norm {norm!r}; choose one of {', '.join(NORMS)}")

def check_head(head, stride=MAP_STRIDE):
    "Raise unless `head` names one of `HEAD_TYPES`, and `stride` is one a count map can have"
    if head not in HEAD_TYPES: raise FlowersError(f"unknown --head {head!r}; choose one of {', '.join(HEAD_TYPES)}")
    if stride not in MAP_CUTS: raise FlowersError(f"--stride {stride!r}: a count map's cells are {' or '.join(map(str, MAP_CUTS))} pixels apart")

def check_stem(stem):
    "Raise unless `stem` is None (the default for the run) or one of `STEMS`"
    if stem is not None and stem not in STEMS: raise FlowersError(f"--stem {stem!r}: the first convolution steps {', '.join(map(str, STEMS))} pixels")

def check_context(context):
    "Raise unless `context` is a number of dilated layers a count map's head can have"
    if not isinstance(context, int) or isinstance(context, bool) or not 0 <= context <= MAX_CONTEXT:
        raise FlowersError(f"--context {context!r}: must be a whole number from 0 to {MAX_CONTEXT} (dilated layers in the count map's head)")

def check_loss(loss):
    "Raise unless `loss` names one of `LOSS_NAMES`"
    if loss not in LOSS_NAMES: raise FlowersError(f"unknown --loss {loss!r}; choose one of {', '.join(LOSS_NAMES)}")

def check_method(method):
    "Raise unless `method` is a resize method that keeps every head: 'squish' or 'pad'"
    if method not in METHODS: raise FlowersDataError(f"method must be {' or '.join(map(repr, METHODS))}, not {method!r}: cropping would cut heads off")

def check_precision(precision, device=None):
    "Raise unless `precision` is one of `PRECISIONS` and runs on `device`"
    if precision not in PRECISIONS: raise FlowersError(f"precision must be {', '.join(PRECISIONS)}, not {precision!r}")
    if precision=='fp16' and device is not None and not str(device).startswith('cuda'):
        raise FlowersError("precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")

def check_pretrained(pretrained) -> str:
    "`pretrained` as one of `PRETRAINED` (True and False are 'yes' and 'no'); raises if it is none of them"
    p = {True:'yes', False:'no'}.get(pretrained, str(pretrained).lower())
    if p not in PRETRAINED: raise FlowersError(f"--pretrained must be {', '.join(PRETRAINED[:-1])} or {PRETRAINED[-1]}, not {pretrained!r}")
    return p

def check_lr(lr):
    "`lr` as a float, 'find' or None; raises if it is none of these"
    if lr is None or lr=='find': return lr
    try: lr = float(lr)
    except (TypeError, ValueError): raise FlowersError(f"--lr must be a number or 'find', not {lr!r}") from None
    if not 0 < lr <= 10: raise FlowersError(f"--lr {lr:g} is not a usable learning rate; try 1e-3..1e-2, or 'find'")
    return lr

def check_args(a):
    "Raise on settings (of `flowers.train.train`) no run can use, before any slow work"
    check_arch(a.arch), check_norm(a.norm), check_stem(a.stem), check_head(a.head, a.stride), check_loss(a.loss), check_method(a.method), check_precision(a.precision), check_pretrained(a.pretrained), check_lr(a.lr)
    for k,lo in (('epochs',1), ('bs',1), ('size',MIN_TRAIN_SIZE), ('workers',0), ('freeze_epochs',0)):
        if k in ('epochs','size','bs') and a[k] is None: continue # `default_schedule`, once the precision is known
        check_int(f"--{k.replace('_','-')}", a[k], lo, f" (smaller images vanish inside {a.arch}; use 64 or more)" if k=='size' else '')
    if a.context is not None: check_context(a.context)
    check_seed(a.seed)
    m = a.minutes
    if isinstance(m, bool) or not isinstance(m, (int,float)) or not 0 < m < float('inf'):
        raise FlowersError(f"--minutes {m!r}: the time the default --epochs fit, a number above 0 (e.g. 5); or give --epochs")
    if not (isinstance(a.valid_pct, (int,float)) and 0 < a.valid_pct < 1):
        raise FlowersError(f"--valid-pct {a.valid_pct!r}: must be between 0 and 1 (e.g. 0.2 holds out a fifth of the images)")

def find_csv(data) -> Path:
    "The counts CSV for `data`: a CSV file, a folder holding `counts.csv`, or None for the default data set (generated if absent)"
    if data is None:
        from .data import default_data # torch and fastai load only when there is something to train
        return default_data()
    data = Path(data)
    if data.is_dir():
        if (data/'counts.csv').is_file(): return data/'counts.csv'
        csvs = sorted(data.glob('*.csv'))
        if len(csvs)==1: return csvs[0]
        raise FlowersError(f"--data {data}: no counts.csv in this folder" + (f" (found {', '.join(c.name for c in csvs)}; pass one)" if csvs else ''))
    if not data.exists(): raise FlowersError(f"--data {data}: no such file or folder")
    return data

def check_folder(path, # A folder to write into; made, with its parents, if absent
                 flag='--out', # The option that named it, for the message
                ) -> bool:
    "Raise unless folder `path` can be written; returns whether it is new"
    path = Path(path)
    if path.exists() and not path.is_dir(): raise FlowersError(f"{flag} {path}: is a file, not a folder; pick another name")
    new = not path.exists()
    try: path.mkdir(parents=True, exist_ok=True)
    except OSError as e: raise FlowersError(f"{flag} {path}: can't create the folder ({e.strerror})") from None
    if not os.access(path, os.W_OK|os.X_OK): raise FlowersError(f"{flag} {path}: this folder is not writable")
    return new

def check_unused(out, # The run folder `--out` names (None: a new one)
                ) -> None:
    "Raise if `out` holds a trained model or an interrupted run, which training there would replace"
    if out is None or not Path(out).is_dir(): return
    out = Path(out)
    if (out/CHECKPOINT).is_file():
        raise FlowersError(f"--out {out}: holds an interrupted run; continue it with --resume {out}, give another --out, or add --overwrite to start it anew")
    held = [f for f in ('export.pkl','model.safetensors') if (out/f).is_file()]
    if held: raise FlowersError(f"--out {out}: holds a trained model ({', '.join(held)}); give another --out, or add --overwrite to replace it")

def new_run_folder(root='models') -> Path:
    "A new folder `root/run-DATE-TIME`, made here: `-2`, `-3`, ... after it when another run took that second's name"
    base = Path(root)/time.strftime('run-%Y%m%d-%H%M%S')
    for i in itertools.count(1):
        path = base if i==1 else base.with_name(f'{base.name}-{i}')
        # made without `exist_ok`, so two runs started in one second (a sweep's loop) can't both take it: one deleted the other's files
        try: path.mkdir(parents=True); return path
        except FileExistsError: continue
        except OSError as e: raise FlowersError(f"--out {path}: can't create the folder ({e.strerror}); give --out") from None

def read_state(run) -> dict:
    "The resumable state of run folder `run`, or {}"
    f = Path(run)/STATE
    if not f.is_file(): return {}
    try: state = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e: state = e
    why = state if isinstance(state, Exception) else 'wrong contents' if not (isinstance(state, dict) and isinstance(state.get('args'), dict)) else _odd_field(state)
    if why: raise FlowersError(f"{f}: not a readable run state ({why}); this run can't be resumed: start a new one with the same flags")
    return state

_NUM,_PATH = (int, float),(str, type(None))
_STATE_FIELDS = dict(lr=_NUM, epochs_done=int, pretrained=bool, recipe=str, best=(dict, type(None)), split=_PATH, cut=(dict, type(None)), schedule=(int, type(None))) # as `train` writes them
_ARG_FIELDS = dict(data=_PATH, img_dir=_PATH, weights=_PATH, out=_PATH, fn_col=str, label_col=str) # those `check_args` does not check

def _is(v, t) -> bool:
    "`isinstance(v, t)`, but a bool is no number: JSON's `true` is Python's 1"
    return isinstance(v, t) and (not isinstance(v, bool) or bool in (t if isinstance(t, tuple) else (t,)))

def _odd_field(state) -> str:
    "What is wrong with the first field of `state` that no run writes ('field lr is 'fast''), or ''"
    # an edited state.json was a traceback from deep inside the resumed run (a format code, a slice, a path of a number)
    best = state.get('best')
    for d,fields,pre in ((state, _STATE_FIELDS, ''), (state['args'], _ARG_FIELDS, 'args.')):
        for k,t in fields.items():
            if k in d and not _is(d[k], t): return f"field {pre}{k} is {d[k]!r}"
    if isinstance(best, dict) and not all(_is(best.get(k), _NUM) for k in ('epoch','valid_loss','mae')): return f"field best is {best!r}"
    cut = state.get('cut')
    if isinstance(cut, dict) and not (_is(cut.get('epoch'), int) and _is(cut.get('epochs'), int) and _is(cut.get('pct'), _NUM)
                                      and 0 <= cut['pct'] < 1 and 0 <= cut['epoch'] < cut['epochs']): return f"field cut is {cut!r}"
    return ''

def resume_state(run) -> dict:
    "The saved state of run folder `run`, or an error saying why it can't be resumed"
    state = read_state(run)
    if not state: raise FlowersError(f"--resume {run}: no {STATE} there; only a run that was interrupted can be resumed")
    if not (Path(run)/CHECKPOINT).is_file():
        raise FlowersError(f"--resume {run}: no {CHECKPOINT}; the run finished or stopped before its first epoch ended")
    return state

def model_file(path, # A run folder, `model.safetensors`, `model.json` or an `export.pkl`
              ) -> Path:
    "The file a model loads from: a run folder's safe format when it has one, else its `export.pkl`; raises if it (or its pair) is missing"
    path = Path(path)
    if path.is_dir(): path = path/'model.safetensors' if (path/'model.safetensors').is_file() else path/'export.pkl'
    pair = (path.with_suffix('.safetensors'), path.with_suffix('.json')) if path.suffix in ('.safetensors','.json') else ()
    for f in pair or (path,):
        if not f.is_file():
            raise FlowersError(f"{f}: model file not found" + (f" (the safe format needs both {pair[0].name} and {pair[1].name})" if pair else ''))
    return path

def decode_threads() -> int:
    "Threads for decoding: Pillow releases the GIL while it decodes, so each core can decode while the model runs"
    return max(2, min(8, os.cpu_count() or 1))
