"""Errors a user can cause, and how command lines report them."""
import sys, warnings
from contextlib import contextmanager

__all__ = ['FlowersError', 'FlowersDataError', 'check_int', 'user_errors']

class FlowersError(Exception):
    "A problem the user can fix (a bad flag, a missing file): reported as one message, exit code 2"

class FlowersDataError(FlowersError, ValueError):
    "A problem with the user's data; `problems` lists `(line, message)` pairs"
    def __init__(self, msg, problems=()): super().__init__(msg); self.problems = list(problems)

def check_int(name, # The flag, e.g. '--bs'
              v, # Its value
              lo=1, # Smallest allowed
              hint='', # Said after the rule
             ) -> int:
    "`v` if it is a whole number of at least `lo`, else a `FlowersError` naming the flag"
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise FlowersError(f"{name} {v!r}: must be a whole number of at least {lo}{hint}")
    return v

def _one_line(message, category, filename, lineno, line=None): return f'warning: {message}\n'

@contextmanager
def user_errors():
    "In a CLI's `main`: a `FlowersError` prints its message and exits with code 2, without a traceback; warnings print as one line"
    old,warnings.formatwarning = warnings.formatwarning,_one_line
    try: yield
    except FlowersError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    finally: warnings.formatwarning = old
