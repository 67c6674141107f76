"""Test set-up: tcmalloc as in the entry points; two logical CPU devices so MirroredStrategy
really has two replicas."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ifnd_tf import runtime


def pytest_configure(config):
    """Before TensorFlow loads: re-execute the run on tcmalloc (ifnd_tf/runtime.py), with
    pytest's output capture stopped so the new process writes to the terminal; then split the
    CPU into two logical devices."""
    capture = config.pluginmanager.getplugin("capturemanager")
    runtime.use_fast_allocator(before_exec=capture.stop_global_capturing if capture else None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from absl import flags

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    flags.FLAGS.mark_as_parsed()  # library code reads flag defaults; tests override via flagsaver


# One strategy object per process: several two-device strategies in one process reuse
# collective instance keys and abort ("Collective instance 100 expected type ...").
@pytest.fixture(scope="session")
def one_replica():
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(["/cpu:0"])


@pytest.fixture(scope="session")
def two_replicas():
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
