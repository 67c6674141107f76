"""Which tf.distribute engine runs the step, where each worker writes, and which input
pipeline each worker is.

mirrored (default): all local GPUs, or --cpu_replicas logical CPUs. multi_worker: several
machines, each described by the TF_CONFIG environment variable. tpu: a TPU named by --tpu.
one_device: the first GPU, else the CPU.

With several workers only the chief writes into --model_dir; worker i writes its checkpoints,
logs and flags.json into --model_dir/worker_<i>, and every worker resumes from the chief's
checkpoints (the model_dir must be on a filesystem all workers see). Each worker reads only
its share of the data (`input_context`; docs/design.md, "Per-worker input").
"""
import os

import tensorflow as tf

STRATEGIES = ("mirrored", "multi_worker", "tpu", "one_device")


def make_strategy(cpu_replicas: int = 1, kind: str = "mirrored",
                  tpu: str | None = None) -> tf.distribute.Strategy:
    """The strategy for `kind`; mirrored splits a GPU-less machine into cpu_replicas devices."""
    gpus = tf.config.list_physical_devices("GPU")
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if kind == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if gpus:
        return tf.distribute.MirroredStrategy()
    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
    return tf.distribute.MirroredStrategy(devices)


def host_input_options(strategy: tf.distribute.Strategy) -> tf.distribute.InputOptions | None:
    """For a MirroredStrategy on this machine's CPUs: one plain input pipeline per replica
    (PER_REPLICA, nothing fetched to a device) instead of TF's MultiDeviceIterator, whose
    per-device datasets autotune in a thread that kept the end of `fit` waiting up to ~35 s
    (docs/design.md, "Epoch boundary"). None elsewhere: GPUs keep the prefetch to the device.
    TF keeps these input workers on the strategy afterwards (MirroredStrategy's
    `_input_workers_with_options`); a run builds no other distributed dataset on it."""
    if not isinstance(strategy, tf.distribute.MirroredStrategy):
        return None
    if any(tf.DeviceSpec.from_string(device).device_type != "CPU"
           for device in strategy.extended.worker_devices):
        return None
    return tf.distribute.InputOptions(
        experimental_fetch_to_device=False,
        experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The chief (or worker 0 when the cluster has no chief) owns --model_dir."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this worker writes: model_dir for the chief, model_dir/worker_<i> otherwise."""
    if is_chief(strategy):
        return model_dir
    return os.path.join(model_dir, f"worker_{strategy.cluster_resolver.task_id}")


def input_context(strategy: tf.distribute.Strategy) -> tf.distribute.InputContext:
    """This process's input pipeline (one per worker), as `distribute_datasets_from_function`
    hands it to its dataset function; for passes that iterate a dataset plainly
    (embedding.DatasetEmbedder). Worker w's L local replicas are numbered w·L ... w·L + L - 1."""
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return tf.distribute.InputContext()
    local = len(strategy.extended.worker_devices)
    ids = strategy.experimental_local_results(
        strategy.experimental_distribute_values_from_function(
            lambda context: context.replica_id_in_sync_group))
    workers = max(1, replicas // local)
    return tf.distribute.InputContext(workers, min(ids) // local if workers > 1 else 0, replicas)
