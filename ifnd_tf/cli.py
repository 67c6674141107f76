"""The one shape of every command's absl main: warnings only, and a bad flag, missing data or a
diverged loss ends the program with one `<program>: error: ...` line (no traceback)."""
import sys
from collections.abc import Callable

from absl import logging

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
