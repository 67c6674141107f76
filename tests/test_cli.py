import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from ifnd_tf import cli, errors


@pytest.mark.parametrize("error", [errors.ConfigError("--epochs must be >= 1, got 0"),
                                   errors.DataError("--dataset=x: no such folder"),
                                   errors.DivergenceError("loss is nan at step 3")])
def test_expected_errors_end_the_program_with_one_line(error):
    def run():
        raise error

    with pytest.raises(SystemExit) as stop:
        cli.main("ifnd_tf.x", run)([])
    assert stop.value.code == f"ifnd_tf.x: error: {error}"


def test_a_command_adds_its_own_errors_and_bugs_keep_their_traceback():
    class StepError(RuntimeError):
        pass

    def failing_step():
        raise StepError("ifnd_tf.train failed")

    with pytest.raises(SystemExit, match="ifnd_tf.compare: error: ifnd_tf.train failed"):
        cli.main("ifnd_tf.compare", failing_step, expected=(StepError,))([])
    with pytest.raises(KeyError):
        cli.main("ifnd_tf.x", lambda: {}["missing"])([])


def _command(main_body: str, **env) -> subprocess.CompletedProcess:
    """A command ending through cli.run: an atexit handler, output block-buffered into a pipe,
    and a non-daemon thread still sleeping when main returns (a normal exit waits for it)."""
    code = ("import atexit, sys, threading, time\n"
            "from ifnd_tf import cli\n"
            "atexit.register(lambda: print('atexit handler ran'))\n"
            "def main(argv):\n"
            "    threading.Thread(target=lambda: (time.sleep(1), print('thread ended'))).start()\n"
            f"    {main_body}\n"
            "cli.run(main)\n")
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "TF_CONFIG")},
           **env}
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    # TensorFlow's own start-up log lines (cli imports the config, which imports TF).
    result.stderr = "".join(line for line in result.stderr.splitlines(keepends=True)
                            if not TF_LOG.match(line))
    return result


TF_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} )")


def test_run_ends_a_successful_command_at_once_with_its_output_and_exit_handlers():
    result = _command("print('result line', end='')")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "result lineatexit handler ran\n"  # the thread was not waited for


@pytest.mark.parametrize("body, code, stderr", [
    ("sys.exit('ifnd_tf.x: error: --epochs must be >= 1')", 1, "ifnd_tf.x: error: --epochs must be >= 1\n"),
    ("sys.exit(75)", 75, ""),
])
def test_run_leaves_errors_and_other_exit_codes_to_the_usual_exit(body, code, stderr):
    result = _command(body)
    assert (result.returncode, result.stderr) == (code, stderr)
    assert result.stdout == "thread ended\natexit handler ran\n"


def test_run_keeps_tracebacks_and_the_usual_exit_of_cluster_members():
    failed = _command("raise KeyError('bug')")
    assert failed.returncode == 1 and "Traceback" in failed.stderr and "KeyError: 'bug'" in failed.stderr
    member = _command("print('done')", TF_CONFIG='{"cluster": {}}')
    assert member.returncode == 0, member.stderr
    assert member.stdout == "done\nthread ended\natexit handler ran\n"
