"""The fast allocator: every entry point runs on tcmalloc when it is installed (ifnd_tf/runtime.py)."""
import os
import platform
import subprocess
import sys
import time

import pytest

from ifnd_tf import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fails on a flag after TensorFlow has loaded: long enough to read the process' memory map.
COMMAND = [sys.executable, "-m", "ifnd_tf.train", "--flagfile=flags/smoke.cfg", "--epochs=0",
           "--model_dir=/nonexistent/never_written"]


def _libraries_while_running(env: dict) -> tuple[set[str], str]:
    """Shared objects mapped by the training process once TensorFlow is in, and its stderr."""
    process = subprocess.Popen(COMMAND, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with open(f"/proc/{process.pid}/maps") as maps:
                libraries = {os.path.basename(line.split()[-1]) for line in maps
                             if len(line.split()) >= 6}
        except OSError:
            break
        if any("libtensorflow" in name for name in libraries):
            seen = libraries
            break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=120)
    assert seen, f"never saw TensorFlow loaded in the training process; stderr: {stderr[-2000:]}"
    return seen, stderr


def _clean_env(**values) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", runtime.SWITCH, runtime.LIBRARY_OVERRIDE, runtime._REEXECUTED,
                        runtime.ONEDNN_SWITCH)}
    return {**env, **values}


@pytest.mark.skipif(runtime.library() is None, reason="libtcmalloc-minimal4 not installed")
def test_training_process_runs_on_tcmalloc():
    libraries, stderr = _libraries_while_running(_clean_env())
    assert any("tcmalloc" in name for name in libraries), sorted(libraries)[:20]
    assert "--epochs must be >= 1" in stderr  # it is the same command, re-executed


def test_switch_turns_the_fast_allocator_off():
    libraries, stderr = _libraries_while_running(_clean_env(IFND_FAST_ALLOCATOR="0"))
    assert not any("tcmalloc" in name for name in libraries)
    assert "tcmalloc not found" not in stderr and "--epochs must be >= 1" in stderr


def test_missing_library_is_one_notice_and_the_run_goes_on():
    libraries, stderr = _libraries_while_running(_clean_env(IFND_TCMALLOC="/nonexistent/tc.so"))
    assert not any("tcmalloc" in name for name in libraries)
    notices = [line for line in stderr.splitlines() if "tcmalloc not found" in line]
    assert len(notices) == 1 and "apt-get install libtcmalloc-minimal4" in notices[0]
    assert "--epochs must be >= 1" in stderr


def test_importing_the_package_changes_no_environment():
    code = ("import os; before = dict(os.environ); import ifnd_tf, ifnd_tf.train; "
            "print(dict(os.environ) == before)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env=_clean_env(), check=True)
    assert result.stdout.strip().splitlines()[-1] == "True"


# TensorFlow's own answer to "are the oneDNN kernels on in this process" (private, test only).
ONEDNN_ON = ("from ifnd_tf import runtime; runtime.prepare(); "
             "from tensorflow.python.util import _pywrap_util_port as port; "
             "print(port.IsMklEnabled())")


@pytest.mark.skipif(platform.machine().lower() not in runtime.ONEDNN_MACHINES,
                    reason="oneDNN is switched on on x86-64 only")
@pytest.mark.parametrize("user_setting, expected", [(None, "True"), ("0", "False")])
def test_entry_points_turn_onednn_on_unless_the_user_said_no(user_setting, expected):
    env = _clean_env(IFND_FAST_ALLOCATOR="0",
                     **({} if user_setting is None else {runtime.ONEDNN_SWITCH: user_setting}))
    result = subprocess.run([sys.executable, "-c", ONEDNN_ON], cwd=ROOT, capture_output=True,
                            text=True, env=env, check=True)
    assert result.stdout.strip().splitlines()[-1] == expected
