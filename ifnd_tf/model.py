"""MoCo v2 as a Keras model whose train_step removes detected false negatives (IFND).

`MomentumContrast(encoder, num_examples, detector)` holds the query encoder, its momentum copy
(the key encoder), the queue of keys with the dataset index of each, and a false-negative
detector (detectors.py) that masks queue entries of the anchor's own class.
"""
import keras
import tensorflow as tf

from ifnd_tf import encoders, keras_compat, losses
from ifnd_tf.config import MoCoConfig
from ifnd_tf.detectors import FalseNegativeDetector


def _random_unit_rows(shape, dtype=None):
    return tf.math.l2_normalize(tf.random.normal(shape, dtype=dtype or "float32"), axis=1)


class MomentumContrast(keras_compat.NoSymbolicBuild, keras.Model):
    """MoCo v2 with false-negative detection.

    Args:
      encoder: images in [0, 1] -> {"features", "embedding"} (encoders.build_encoder /
        with_head), or any functional Keras model mapping images to features: the MoCo v2 head
        is then added (`encoders.with_head`, 128-d).
      num_examples: size of the training set; batches carry dataset indices in [0, this).
      detector: a detectors.FalseNegativeDetector, or None for plain MoCo v2.
      moco: queue size, temperature, momentum, weight decay, shuffle-BN groups (key_bn_splits)
        and what the loss does with false negatives (fn_strategy).
      key_encoder: the momentum encoder, same architecture (default: a copy of `encoder` with
        its BatchNorm grouped for shuffle-BN, `encoders.key_encoder_for`); its weights are set
        to the query encoder's.
      seed: the shuffle-BN permutations are a function of (seed, step).
      compile_per_replica: XLA-compile each replica's EMA update, key and query forward, loss
        and gradients; the cross-replica ops between them (shuffle-BN gathers, the BatchNorm
        statistics mean, gradient all-reduce and SGD apply, queue update) stay outside. For
        several replicas; one replica compiles the whole step instead (compile(jit_compile)).

    Build it in the strategy's scope. train_step takes batches (index, view_q, view_k).
    """

    def __init__(self, encoder: keras.Model, num_examples: int,
                 detector: FalseNegativeDetector | None = None, moco: MoCoConfig | None = None,
                 key_encoder: keras.Model | None = None, seed: int = 0,
                 compile_per_replica: bool = False, **kwargs):
        super().__init__(**kwargs)
        moco = moco or MoCoConfig()
        self.settings = moco
        self.encoder = encoder if encoders.is_encoder(encoder) else encoders.with_head(encoder)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        groups = encoders.key_bn_groups(moco.key_bn_splits, replicas)
        self.key_encoder = key_encoder or encoders.key_encoder_for(self.encoder, groups)
        self._check_key_encoder(groups)
        self.seed = seed
        self.num_examples = num_examples
        dim = self.encoder.output["embedding"].shape[-1]
        first = "only_first_replica"  # every replica computes the same update
        self.queue_keys = self.add_weight(shape=(moco.queue_size, dim), trainable=False,
                                          initializer=_random_unit_rows, aggregation=first,
                                          name="queue_keys")
        self.queue_ids = self.add_weight(shape=(moco.queue_size,), dtype="int32",
                                         initializer=keras.initializers.Constant(-1),
                                         trainable=False, aggregation=first, name="queue_ids")
        self.queue_ptr = self.add_weight(shape=(), initializer="zeros", dtype="int32",
                                         trainable=False, aggregation=first, name="queue_ptr")
        self.detector = detector
        if detector is not None:
            detector.build_state(num_examples, dim)
        self._make_trackers()
        self.compiles_per_replica = compile_per_replica
        per_replica = (lambda f: tf.function(f, jit_compile=True)) if compile_per_replica else (
            lambda f: f)
        self._ema_update = per_replica(self.update_key_encoder)
        self._key_forward = per_replica(self._key_embeddings)
        self._query_step = per_replica(self._query_loss_and_gradients)
        self.copy_query_to_key_encoder()
        self.built = True  # both encoders are built functional models; no symbolic build needed

    def _check_key_encoder(self, groups: int | None) -> None:
        """Shuffle-BN needs every BatchNorm of the key encoder grouped `groups` ways."""
        found = {layer.groups for layer in encoders.all_layers(self.key_encoder)
                 if isinstance(layer, encoders.GroupedBatchNormalization)}
        assert found == ({groups} if groups else set()), (
            f"key_bn_splits={self.settings.key_bn_splits} needs a key encoder built with "
            f"bn_groups={groups}, got BatchNorm groups {sorted(found) or None}")

    def _make_trackers(self) -> None:
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="acc")
        # Under elimination the loss never sees the masked entries; top-1 among what it sees.
        self.accuracy_without_fn_tracker = keras.metrics.Mean(name="acc_without_fn")
        self.masked_tracker = keras.metrics.Mean(name="masked")
        self.spread_tracker = keras.metrics.Mean(name="key_spread")  # collapse watch

    @property
    def metrics(self):
        detector = self.detector.step_metrics if self.detector is not None else []
        return [self.loss_tracker, self.accuracy_tracker, self.accuracy_without_fn_tracker,
                self.masked_tracker, self.spread_tracker, *detector]

    def call(self, images, training=False):
        return self.encoder(images, training=training)["embedding"]

    def copy_query_to_key_encoder(self) -> None:
        """Start the key encoder as an exact copy of the query encoder (MoCo init)."""
        self.key_encoder.set_weights(self.encoder.get_weights())

    def update_key_encoder(self) -> None:
        """key <- m * key + (1 - m) * query, trainable weights only (BN statistics are the
        key's own)."""
        m = self.settings.momentum
        for key_var, query_var in zip(self.key_encoder.trainable_variables,
                                      self.encoder.trainable_variables):
            key_var.assign(m * key_var + (1.0 - m) * tf.cast(query_var, key_var.dtype))

    def momentum_keys(self, images: tf.Tensor, step: tf.Tensor | int = 0) -> tf.Tensor:
        """Key embeddings of this replica's images, BN in training mode, no gradient.

        With key_bn_splits > 1 (shuffle-BN, as MoCo's batch_shuffle_ddp): the global key batch
        is gathered and permuted, each replica embeds its slice of the permutation with local
        BN in key_bn_splits / replicas groups, and the keys are gathered and un-permuted. A
        query and its key thus never share BN statistics: no BN shortcut. The permutation is a
        stateless function of (seed, step), the same on every replica, so a resumed run
        shuffles as an uninterrupted one.
        """
        if self.settings.key_bn_splits == 1:
            return tf.stop_gradient(self._key_forward(images))
        replica = tf.distribute.get_replica_context()
        several = replica.num_replicas_in_sync > 1
        # tf.identity places the input on this replica's device: an all_gather of the input
        # tensor itself failed under MultiWorkerMirroredStrategy ("destinations can not be
        # empty"; the iterator's tensors carry no device there).
        everything = replica.all_gather(tf.identity(images), axis=0) if several else images
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        order = tf.argsort(tf.random.stateless_uniform([tf.shape(everything)[0]], seed))
        local = tf.shape(images)[0]
        first = tf.cast(replica.replica_id_in_sync_group, tf.int32) * local
        shuffled = self._key_forward(tf.gather(everything, order[first:first + local]))
        if several:
            shuffled = replica.all_gather(shuffled, axis=0)
        keys = tf.gather(shuffled, tf.math.invert_permutation(order))[first:first + local]
        return tf.stop_gradient(keys)

    def _key_embeddings(self, images: tf.Tensor) -> tf.Tensor:
        """The key encoder's float32 embeddings, BN in training mode (replica-local)."""
        return tf.cast(self.key_encoder(images, training=True)["embedding"], tf.float32)

    def false_negatives(self, index: tf.Tensor, queue_ids: tf.Tensor, cosines: tf.Tensor,
                        queue_keys: tf.Tensor) -> tf.Tensor:
        """The detector's mask bool [batch, queue] (all False without a detector)."""
        if self.detector is None:
            return tf.zeros(tf.shape(cosines), tf.bool)
        keys = {"queue_keys": queue_keys} if self.detector.reads_queue_keys else {}
        return self.detector.mask(index, queue_ids, tf.stop_gradient(cosines), **keys)

    def _query_loss_and_gradients(self, index: tf.Tensor, view_q: tf.Tensor, keys: tf.Tensor,
                                  queue_keys: tf.Tensor, queue_ids: tf.Tensor):
        """(gradients of the query encoder's weights, this replica's mean loss, logits, the
        false-negative mask used)."""
        variables = self.encoder.trainable_variables
        with tf.GradientTape() as tape:
            query = tf.cast(self.encoder(view_q, training=True)["embedding"], tf.float32)
            positive, cosines = losses.similarities(query, keys, queue_keys)
            logits = losses.logits_from(positive, cosines, self.settings.temperature)
            fn_mask = self.false_negatives(index, queue_ids, cosines, queue_keys)
            loss = tf.reduce_mean(losses.ifnd_loss(
                logits, fn_mask, self.settings.fn_strategy, self.settings.class_prior,
                self.settings.temperature))
            total = loss + losses.weight_decay_loss(variables, self.settings.weight_decay)
            # Gradients are summed over replicas: scale so the step matches one big batch.
            scaled = self.optimizer.scale_loss(
                total / self.distribute_strategy.num_replicas_in_sync)
        return tape.gradient(scaled, variables), loss, logits, fn_mask

    def enqueue(self, keys: tf.Tensor, ids: tf.Tensor) -> None:
        """Replace the oldest entries (FIFO, wrapping) with the global batch of keys.

        The slice never wraps inside one batch, so the queue size must be a multiple of the
        global batch (config checks --queue_size; this guards every other caller).
        """
        queue_size, batch = self.queue_ids.shape[0], keys.shape[0]
        if batch is not None and queue_size % batch:
            raise ValueError(
                f"queue size {queue_size} is not a multiple of the global batch {batch}")
        if batch is None:
            tf.debugging.assert_equal(queue_size % tf.shape(keys)[0], 0,
                                      message="queue size is not a multiple of the global batch")
        ptr = tf.convert_to_tensor(self.queue_ptr)
        self.queue_keys.assign(keras.ops.slice_update(self.queue_keys, [ptr, 0], keys))
        self.queue_ids.assign(keras.ops.slice_update(self.queue_ids, [ptr], tf.cast(ids, tf.int32)))
        self.queue_ptr.assign((ptr + tf.shape(keys)[0]) % self.queue_ids.shape[0])

    def train_step(self, data):
        index, view_q, view_k = data
        replica = tf.distribute.get_replica_context()
        # 1. Momentum update, then the keys of the second view (no gradient, shuffle-BN).
        self._ema_update()
        keys = self.momentum_keys(view_k, self.optimizer.iterations)
        # 2. Query forward, logits against key and queue, the detector's false negatives out
        #    of the loss (elimination) or into the positives (attraction), gradients.
        queue_ids = tf.convert_to_tensor(self.queue_ids)
        grads, loss, logits, fn_mask = self._query_step(
            index, view_q, keys, tf.convert_to_tensor(self.queue_keys), queue_ids)
        if self.detector is not None:
            self.detector.count(index, queue_ids, fn_mask)
            self.detector.learn(index, queue_ids, logits[:, 1:] * self.settings.temperature)
        # 3. Replica-local BatchNorm statistics averaged, SGD step on the query encoder.
        encoders.average_local_batch_norm([self.encoder, self.key_encoder])
        self.optimizer.apply_gradients(zip(grads, self.encoder.trainable_variables))
        # 4. The global batch of keys joins the queue with its dataset indices (int32: an
        #    int64 all_gather fails under MultiWorkerMirroredStrategy).
        ids = replica.all_gather(tf.cast(index, tf.int32), axis=0)
        all_keys = replica.all_gather(keys, axis=0)
        self.enqueue(all_keys, ids)
        if self.detector is not None:
            self.detector.observe(all_keys, ids)
        return self._track(loss, logits, fn_mask, all_keys, queue_ids)

    def _track(self, loss, logits, fn_mask, all_keys, queue_ids) -> dict:
        self.loss_tracker.update_state(loss)
        # acc: unmasked, comparable with a MoCo run's; acc_without_fn: detected FNs removed.
        tie, valid = losses.TIE_COSINE / self.settings.temperature, queue_ids >= 0
        self.accuracy_tracker.update_state(losses.contrastive_accuracy(logits, tie, valid))
        self.accuracy_without_fn_tracker.update_state(losses.contrastive_accuracy(
            losses.masked_logits_for_elimination(logits, fn_mask), tie, valid))
        self.masked_tracker.update_state(
            tf.reduce_mean(tf.reduce_sum(tf.cast(fn_mask, tf.float32), 1)))
        spread = losses.key_spread(all_keys)
        self.spread_tracker.update_state(spread)
        results = {m.name: m.result() for m in self.metrics}
        # Batch callbacks (collapse.StopOnCollapse) see this step's spread; the epoch logs are
        # the trackers' means (Keras takes them when the keys match the metric names).
        results["key_spread"] = spread
        return keras_compat.step_results(results, self.distribute_strategy)
