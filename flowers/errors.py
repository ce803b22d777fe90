"""Errors a user can cause, and how command lines report them."""
import sys, warnings
from contextlib import contextmanager

__all__ = ['FlowersError', 'FlowersDataError', 'user_errors']

class FlowersError(Exception):
    "A problem the user can fix (a bad flag, a missing file): reported as one message, exit code 2"

class FlowersDataError(FlowersError, ValueError):
    "A problem with the user's data; `problems` lists `(line, message)` pairs"
    def __init__(self, msg, problems=()): super().__init__(msg); self.problems = list(problems)

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
