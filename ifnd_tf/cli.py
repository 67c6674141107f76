"""The one shape of every command's absl main: warnings only, and a bad flag, missing data or a
diverged loss ends the program with one `<program>: error: ...` line (no traceback); and how
every command ends (`run`)."""
import atexit
import ctypes
import os
import sys
from collections.abc import Callable

from absl import app, logging

from ifnd_tf.errors import ConfigError, DataError, DivergenceError, RunDirError

EXPECTED_ERRORS = (ConfigError, DataError, DivergenceError, RunDirError)


def main(program: str, run: Callable[[], object],
         expected: tuple[type[Exception], ...] = ()) -> Callable[[list[str]], None]:
    """An absl main running `run()`; `expected` adds a command's own one-line errors."""
    def absl_main(argv):
        del argv
        logging.set_verbosity(logging.WARNING)
        try:
            run()
        except (*EXPECTED_ERRORS, *expected) as e:
            sys.exit(f"{program}: error: {e}")
    return absl_main


def run(absl_main: Callable[[list[str]], None]) -> None:
    """absl's app.run, ending a successful command without Python's object teardown.

    Freeing TensorFlow's Python objects at interpreter exit takes ~2 s after every command, with
    nothing left to write (docs/design.md, "Fast exit"). After a successful main the atexit
    handlers run, Python's and C's output buffers are flushed, and os._exit(0) ends the process.
    An error, another exit code (a bad flag, pre-emption) or a member of a TF cluster
    (TF_CONFIG: its coordination service says goodbye during teardown) exits the usual way.
    """
    try:
        app.run(absl_main)
    except SystemExit as stop:
        if stop.code not in (None, 0) or os.environ.get("TF_CONFIG"):
            raise
    atexit._run_exitfuncs()  # what a normal exit runs first (logging's flush, TF's hooks)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # e.g. a closed pipe: Python's own exit code for it
        os._exit(120)
    ctypes.CDLL(None).fflush(None)  # C stdio, e.g. ONEDNN_VERBOSE's lines into a pipe
    os._exit(0)
