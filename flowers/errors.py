"""Errors a user can cause, and how command lines read and report them."""
import os, signal, sys, threading, warnings
from contextlib import contextmanager

__all__ = ['FlowersError', 'FlowersDataError', 'first_line', 'MAX_SEED', 'check_int', 'check_seed', 'check_tile', 'options_first', 'user_errors', 'term_interrupts']

class FlowersError(Exception):
    "A problem the user can fix (a bad flag, a missing file): reported as one message, exit code 2"

class FlowersDataError(FlowersError, ValueError):
    "A problem with the user's data; `problems` lists `(line, message)` pairs"
    def __init__(self, msg, problems=()): super().__init__(msg); self.problems = list(problems)

def first_line(e:Exception, n=200) -> str:
    "The first line of `e`'s message, at most `n` characters, for a message of ours; its type's name where it has none"
    return (str(e).splitlines() or [type(e).__name__])[0][:n] # an empty message made `splitlines()[0]` an IndexError

def check_int(name, # The flag, e.g. '--bs'
              v, # Its value
              lo=1, # Smallest allowed
              hint='', # Said after the rule
              hi=None, # Largest allowed, if any
             ) -> int:
    "`v` if it is a whole number of at least `lo` (and at most `hi`), else a `FlowersError` naming the flag"
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        raise FlowersError(f"{name} {v!r}: must be a whole number " + (f"from {lo} to {hi}" if hi is not None else f"of at least {lo}") + hint)
    return v

MAX_SEED = 2**32-1 # numpy's seeds: torch's manual_seed overflowed past 2^64 and numpy's generators refuse negative ones, with tracebacks

def check_seed(seed) -> int:
    "`seed` if it is a seed every library here takes, else a `FlowersError`"
    return check_int('--seed', seed, 0, hi=MAX_SEED)

def check_tile(tile, # `--tile`: pixels of the image per model input, as a number or its text, or 'auto'
               lo=8, # Smallest allowed
              ):
    "`tile` as a whole number of at least `lo`, or 'auto' (the training images' side, which only the model knows), else a `FlowersError`"
    if isinstance(tile, str):
        t = tile.strip().lower()
        if t=='auto': return t
        if t.isdigit(): tile = int(t)
    return check_int('--tile', tile, lo, hint=", or auto (the training images' size)")

def options_first(args, # A command line's arguments, without the program's name
                  flags=(), # Its options that take no value
                 ) -> list:
    "`args` with every option (and its value) moved before the rest, in order: `model --tile 512 a.jpg b.jpg` as `--tile 512 model a.jpg b.jpg`"
    # argparse takes no positional after an option once one positional takes many (`*inputs`): `a.jpg` would be "unrecognized"
    opts,rest,last,it = [],[],[],iter(args)
    for a in it:
        if a=='--': rest += [a, *it]
        elif not a.startswith('--') and a!='-h': rest.append(a)
        elif a in (*flags, '-h', '--help', '--pdb') or '=' in a: opts.append(a)
        else:
            v = next(it, None) # its value, even one like '-5'
            if v is None: last = [a] # left last, where argparse says it wants a value
            else: opts += [a, v]
    return opts + rest + last

def _one_line(message, category, filename, lineno, line=None): return f'warning: {message}\n'

@contextmanager
def user_errors():
    "In a CLI's `main`: a `FlowersError` prints its message and exits with code 2, without a traceback; warnings print as one line; a closed pipe ends it quietly"
    old,warnings.formatwarning = warnings.formatwarning,_one_line
    try: yield
    except FlowersError as e:
        # one write, so that the processes of a `torchrun` launch don't interleave their lines; each says which it is, as one may fail alone
        rank,world = os.environ.get('RANK', '0'),os.environ.get('WORLD_SIZE', '1')
        sys.stderr.write(f"error{f' (rank {rank} of {world})' if world not in ('', '1') else ''}: {e}\n")
        sys.exit(2)
    except BrokenPipeError:
        # `| head` took what it wanted and closed the pipe: a traceback said so, and another as Python flushed stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141) # 128 + SIGPIPE, as the shell's own tools end there
    finally: warnings.formatwarning = old

def _interrupt(signum, frame): raise KeyboardInterrupt

@contextmanager
def term_interrupts():
    "While inside, SIGTERM stops the main thread as Ctrl-C does, so that `with` blocks (a process pool's) clean up"
    # SIGTERM's default kills only this process: a pool's workers, forked, then waited forever on its queue with ~500 MB each
    if threading.current_thread() is not threading.main_thread(): yield; return # signals reach the main thread only
    old = signal.signal(signal.SIGTERM, _interrupt)
    try: yield
    finally: signal.signal(signal.SIGTERM, old)
