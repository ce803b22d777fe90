"""Atomic file writes: a crash mid-write never leaves a truncated file, nor destroys the previous one."""
import contextlib, os
from pathlib import Path

__all__ = ['atomic_path', 'atomic_text', 'remove_stale']

def _umask():
    m = os.umask(0o022); os.umask(m) # the only way to read it
    return m

@contextlib.contextmanager
def atomic_path(fname):
    "Yield a temporary path beside `fname` to write to; it replaces `fname` only once the block ends without error"
    fname = Path(fname)
    tmp = fname.with_name(f'.{fname.stem}.tmp{os.getpid()}{fname.suffix}') # same suffix: savers pick formats by it
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask()) # as `open` would make it: some writers (safetensors) make 0600 files others can't load
        os.replace(tmp, fname) # atomic on POSIX and Windows, within one folder
    finally: tmp.unlink(missing_ok=True)

def atomic_text(fname, text:str):
    "Write `text` to `fname` atomically"
    with atomic_path(fname) as tmp: Path(tmp).write_text(text)

def remove_stale(folder):
    "Delete temporary files that a killed process left in `folder` mid-write"
    for f in Path(folder).glob('.*.tmp*'): f.unlink(missing_ok=True)
