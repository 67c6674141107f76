"""What a process running ifnd_tf sets up before TensorFlow loads: a fast allocator, oneDNN
kernels on every x86-64 CPU, quiet logs.

glibc's malloc hands TensorFlow's large per-step buffers back to the kernel and faults them in
again every step; on a 2-core AVX2 machine that was 38 % of the demo's CPU time, and preloading
tcmalloc made the small-net step 2.2x faster (docs/design.md, "Fast allocator"). A library cannot
switch allocators once the process runs, so every entry point calls `prepare()` first thing,
before TensorFlow is imported: it re-executes the same command once with tcmalloc preloaded.
Importing `ifnd_tf` changes nothing; only the entry points (and the test suite) call this.

TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512/AMX-class features;
on an AVX2-only CPU it runs Eigen's, whose convolution input gradient took up to 6x the forward
time on small maps with many channels. With oneDNN on, the small-net step ran 1.2x faster there
and the CIFAR ResNet-18 step went from 0.84x to 1.1x PyTorch's speed (docs/design.md, "oneDNN
on AVX2"). Set on x86-64 only: elsewhere TensorFlow's own default stands.

    IFND_FAST_ALLOCATOR=0   run on the system allocator (no re-exec, no notice)
    IFND_TCMALLOC=/path     use this tcmalloc instead of Debian's libtcmalloc-minimal4
    TF_ENABLE_ONEDNN_OPTS=0 TensorFlow's own switch: set by the user, it is left as it is
"""
import glob
import os
import platform
import sys
from collections.abc import Callable

SWITCH = "IFND_FAST_ALLOCATOR"
LIBRARY_OVERRIDE = "IFND_TCMALLOC"
LIBRARY_GLOB = "/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4"  # Debian: libtcmalloc-minimal4
INSTALL_HINT = "apt-get install libtcmalloc-minimal4"
ONEDNN_SWITCH = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_MACHINES = ("x86_64", "amd64")  # platform.machine(), lower case: where it is switched on
_REEXECUTED = "_IFND_TCMALLOC_REEXECUTED"  # set in the child: never loop if the preload failed


def library() -> str | None:
    """Path of the tcmalloc to preload, or None when it is not installed."""
    override = os.environ.get(LIBRARY_OVERRIDE)
    if override is not None:
        return override if os.path.exists(override) else None
    found = sorted(glob.glob(LIBRARY_GLOB))
    return found[0] if found else None


def loaded_allocator() -> str | None:
    """Path of the tcmalloc or jemalloc mapped into this process, or None (glibc malloc)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if "tcmalloc" in os.path.basename(path) or "jemalloc" in os.path.basename(path):
                    return path
    except OSError:
        return None
    return None


def use_fast_allocator(before_exec: Callable[[], None] | None = None) -> None:
    """Re-execute this command with tcmalloc preloaded, once, when it is present and not loaded.

    Prints one line to stderr when the library is missing. Off with IFND_FAST_ALLOCATOR=0.
    `before_exec` runs just before the re-exec (pytest: give the terminal back first).
    """
    if not sys.platform.startswith("linux") or os.environ.get(SWITCH, "1") == "0":
        return
    if loaded_allocator() or os.environ.get(_REEXECUTED):
        return
    path = library()
    if path is None:
        print(f"ifnd_tf: tcmalloc not found ({INSTALL_HINT}); running on the system allocator, "
              f"up to 2x slower on some CPUs ({SWITCH}=0 silences this)", file=sys.stderr,
              flush=True)
        return
    preload = ":".join(p for p in (path, os.environ.get("LD_PRELOAD")) if p)
    env = {**os.environ, "LD_PRELOAD": preload, _REEXECUTED: "1"}
    if before_exec is not None:
        before_exec()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def prepare(before_exec: Callable[[], None] | None = None) -> None:
    """Entry points call this before importing TensorFlow: fast allocator, oneDNN, C++ info
    logs off."""
    use_fast_allocator(before_exec)
    if platform.machine().lower() in ONEDNN_MACHINES:
        os.environ.setdefault(ONEDNN_SWITCH, "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
