"""The command line's edge: every absl flag, defined from the config's fields (config.py), so
a flag and its field cannot drift; the one shape of every command's main (a bad flag, missing
data or a diverged loss ends the program with one `<program>: error: ...` line, no traceback);
and how every command ends (`run`). Library modules read no flag: commands read them here.
"""
import atexit
import ctypes
import dataclasses
import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from ifnd_tf import command_settings, config
from ifnd_tf.errors import ConfigError, DataError, DivergenceError, RunDirError

FLAGS = flags.FLAGS


def _define(field: dataclasses.Field) -> None:
    """One absl flag from one config field: its kind from the default (and choices)."""
    name, default, meta = config.flag_name(field), field.default, field.metadata
    if meta["multi"]:
        flags.DEFINE_multi_string(name, list(default), meta["help"])
    elif isinstance(default, tuple):
        flags.DEFINE_list(name, [str(v) for v in default], meta["help"])
    elif meta["choices"]:
        flags.DEFINE_enum(name, default, list(meta["choices"]), meta["help"])
    elif isinstance(default, bool):
        flags.DEFINE_bool(name, default, meta["help"])
    elif isinstance(default, int):
        flags.DEFINE_integer(name, default, meta["help"])
    elif isinstance(default, float):
        flags.DEFINE_float(name, default, meta["help"])
    else:
        flags.DEFINE_string(name, default, meta["help"])


# Every section the command line defines flags for, in --helpfull order.
COMMAND_LINE_SECTIONS = (*config.SECTIONS.values(), command_settings.EvalConfig,
                         command_settings.CompareConfig)
for _section in COMMAND_LINE_SECTIONS:
    for _field in config.flag_fields(_section):
        _define(_field)


def flag_values(section) -> dict:
    """{flag name: parsed value} of a config section's flags."""
    return {config.flag_name(f): FLAGS[config.flag_name(f)].value
            for f in config.flag_fields(section)}


def run_config_from_flags() -> config.RunConfig:
    """The pre-training run the flags describe (not yet validated)."""
    values = {}
    for section in config.SECTIONS.values():
        values.update(flag_values(section))
    return config.RunConfig.from_flat(values)


def section_from_flags(section_type):
    """EvalConfig or CompareConfig from the flags."""
    return section_type(**{f.name: config.parse_setting(config.flag_name(f), f, FLAGS[
        config.flag_name(f)].value) for f in config.flag_fields(section_type)})


def parse_flag_args(args: list[str]) -> dict:
    """{flag name: value} of `--name=value` arguments, parsed as the command line would."""
    values = {}
    for arg in args:
        name, _, text = arg[2:].partition("=")
        try:
            values[name] = FLAGS[name].parser.parse(text)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"{arg}: {e}") from e
    return values


def command_record() -> dict:
    """The evaluation and compare flags, recorded in flags.json beside the run's settings."""
    return {**flag_values(command_settings.EvalConfig), **flag_values(command_settings.CompareConfig)}

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
