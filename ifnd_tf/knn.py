"""Weighted kNN classification of features (InstDisc, lightly): the kNN monitor's measure."""
import numpy as np
import tensorflow as tf


def knn_scores(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
               num_classes: int, k: int = 200, temperature: float = 0.1,
               batch_size: int = 1024) -> np.ndarray:
    """Class scores [num_test, num_classes] of the weighted kNN classifier.

    Each test sample's k nearest train samples (cosine similarity s) vote for their class with
    weight exp(s / temperature), as in InstDisc and lightly's kNN monitor. Test samples are
    processed in batches so the similarity matrix never holds all pairs at once.
    """
    train = tf.math.l2_normalize(tf.constant(train_features, tf.float32), axis=1)
    labels = tf.constant(train_labels, tf.int64)
    k = min(k, len(train_features))
    scores = []
    for start in range(0, len(test_features), batch_size):
        query = tf.math.l2_normalize(
            tf.constant(test_features[start:start + batch_size], tf.float32), axis=1)
        similarity, neighbours = tf.math.top_k(tf.matmul(query, train, transpose_b=True), k)
        votes = tf.one_hot(tf.gather(labels, neighbours), num_classes)
        scores.append(tf.reduce_sum(votes * tf.exp(similarity / temperature)[..., None], axis=1))
    return tf.concat(scores, 0).numpy()


def knn_top1(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
             test_labels: np.ndarray, num_classes: int, k: int = 200,
             temperature: float = 0.1) -> float:
    """Top-1 accuracy of the weighted kNN classifier on the test features."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature)
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(test_labels)))
