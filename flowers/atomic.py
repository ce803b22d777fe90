"""Atomic file writes: a crash mid-write never leaves a truncated file, nor destroys the previous one."""
import contextlib, os, sys
from pathlib import Path

__all__ = ['atomic_path', 'atomic_text', 'FORMULA_START', 'defused', 'undefused', 'write_table', 'remove_stale', 'locked']

def _umask():
    m = os.umask(0o022); os.umask(m) # the only way to read it
    return m

@contextlib.contextmanager
def atomic_path(fname):
    "Yield a temporary path beside `fname` to write to; it replaces `fname` only once the block ends without error"
    # `--out /dev/null` (run as root) replaced the device with a file, and `/dev/stdout` its link: what is no file is written to as it is
    if os.path.exists(fname) and not os.path.isfile(fname): yield Path(fname); return
    fname = Path(os.path.realpath(fname)) # a link to a file stays a link: the file it names is replaced
    tmp = fname.with_name(f'.{fname.stem}.tmp{os.getpid()}{fname.suffix}') # same suffix: savers pick formats by it
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask()) # as `open` would make it: some writers (safetensors) make 0600 files others can't load
        os.replace(tmp, fname) # atomic on POSIX and Windows, within one folder
    finally: tmp.unlink(missing_ok=True)

def atomic_text(fname, text:str):
    "Write `text` to `fname` atomically"
    with atomic_path(fname) as tmp: Path(tmp).write_text(text)

# a spreadsheet opening a CSV runs a cell starting with one of these as a formula: a photo named =HYPERLINK("http://...")
# or =cmd|' /C calc'!A0 becomes a link or a command (OWASP's "CSV injection"); the web page's download defuses the same ones
FORMULA_START = ('=', '+', '-', '@', '\t', '\r')

def defused(s):
    "Text cell `s` with a `'` in front where a spreadsheet would run it as a formula (or where it starts with `'`, so `undefused` gives `s` back)"
    return "'"+s if isinstance(s, str) and s.startswith((*FORMULA_START, "'")) else s

def undefused(s):
    "Text cell `s` as it was before `defused`"
    return s[1:] if isinstance(s, str) and s.startswith("'") else s

def write_table(df, # A table: its text cells are defused, its numbers (a negative error) left as they are
                fname, # CSV file to write (atomically)
               ):
    "Write `df` as a CSV that a spreadsheet opens without running any cell as a formula"
    df = df.assign(**{c:df[c].map(defused) for c in df.columns if df[c].dtype.kind not in 'biufcmM'})
    with atomic_path(fname) as tmp: df.to_csv(tmp, index=False)

def remove_stale(folder):
    "Delete temporary files that a killed process left in `folder` mid-write"
    for f in Path(folder).glob('.*.tmp*'): f.unlink(missing_ok=True)

@contextlib.contextmanager
def locked(fname, # Lock file, created if absent; the lock goes with the process, so a killed one never leaves it held
           waiting:str='', # Printed to stderr when another process holds the lock, before waiting for it
          ):
    "Hold an exclusive lock on `fname` for the block, after any other process that holds it"
    try:
        import fcntl
        Path(fname).parent.mkdir(parents=True, exist_ok=True)
        f = open(fname, 'a')
    # Windows has no flock, and a read-only folder takes no lock file: nothing can be drawn there either, so there is nothing to keep apart
    except (ImportError, OSError): f = None
    if f is None: yield; return
    with f:
        try: fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting: print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        try: yield
        finally: fcntl.flock(f, fcntl.LOCK_UN)
