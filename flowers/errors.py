"""Errors a user can cause, and how command lines report them."""
import sys
from contextlib import contextmanager

__all__ = ['FlowersError', 'FlowersDataError', 'user_errors']

class FlowersError(Exception):
    "A problem the user can fix (a bad flag, a missing file): reported as one message, exit code 2"

class FlowersDataError(FlowersError, ValueError):
    "A problem with the user's data; `problems` lists `(line, message)` pairs"
    def __init__(self, msg, problems=()): super().__init__(msg); self.problems = list(problems)

@contextmanager
def user_errors():
    "In a CLI's `main`: a `FlowersError` prints its message and exits with code 2, without a traceback"
    try: yield
    except FlowersError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
