import numpy as np
import tensorflow as tf

from ifnd_tf import plots


def _size(png):
    image = tf.image.decode_png(png, channels=4)
    return tuple(image.shape)


def test_pca_finds_the_direction_of_largest_variance():
    rng = np.random.default_rng(0)
    along = rng.normal(size=500) * 5.0
    direction = rng.normal(size=16)
    direction /= np.linalg.norm(direction)
    points = 3.0 + np.outer(along, direction) + 0.1 * rng.normal(size=(500, 16))
    projected = plots.pca_2d(points)
    assert projected.shape == (500, 2)
    assert abs(np.corrcoef(projected[:, 0], along)[0, 1]) > 0.999
    assert projected[:, 0].var() > 100 * projected[:, 1].var()
    np.testing.assert_allclose(projected.mean(axis=0), 0.0, atol=1e-9)


def test_curves_png_draws_what_was_logged():
    history = [{"epoch": 1, "knn_top1": 0.5, "fn_precision": 0.0, "fn_recall": 0.0,
                "purity_k10": 0.0, "accepted": 0.0},
               {"epoch": 2, "knn_top1": 0.6, "fn_precision": 0.4, "fn_recall": 0.2,
                "purity_k10": 0.7, "accepted": 900.0}]
    png = plots.curves_png(history)
    assert _size(png) == (700, 1000, 4)
    assert png != plots.curves_png(history[:1])  # the second epoch changes the picture
    assert _size(plots.curves_png([{"epoch": 1, "knn_top1": 0.5}])) == (700, 1000, 4)  # MoCo


def test_scatter_png_colours_every_class():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(300, 2))
    png = plots.scatter_png(points, np.arange(300) % 12, "twelve classes")
    assert _size(png) == (600, 700, 4)
    assert png != plots.scatter_png(points, np.arange(300) % 3, "three classes")
