import numpy as np
from conftest import write_image_folder

from ifnd_tf import fingerprint, sources


def test_arrays_fingerprint_sees_one_changed_pixel():
    images = np.zeros((10, 4, 4), np.uint8)
    before = fingerprint.of_arrays(images)
    assert before == fingerprint.of_arrays(images.copy())
    images[7, 1, 2] = 1
    after = fingerprint.of_arrays(images)
    assert after["examples"] == 10 and after["sha256"] != before["sha256"]
    assert fingerprint.describe_change(before, after) == (
        "the same 10 examples, but their image contents differ")
    assert fingerprint.describe_change(before, fingerprint.of_arrays(images[:9])) == (
        "10 -> 9 examples")


def test_folder_fingerprint_sees_added_and_swapped_files(tmp_path):
    write_image_folder(tmp_path)
    before = sources.load_source(f"folder:{tmp_path}").fingerprint
    assert before["examples"] == 6 and before["kind"] == "files"
    assert fingerprint.describe_change(before, sources.load_source(f"folder:{tmp_path}").fingerprint) \
        is None
    (tmp_path / "train" / "dog" / "2.png").rename(tmp_path / "train" / "dog" / "7.png")
    renamed = sources.load_source(f"folder:{tmp_path}").fingerprint
    assert fingerprint.describe_change(before, renamed) == (
        "the same 6 examples, but their file names or sizes differ")
    (tmp_path / "train" / "dog" / "8.png").write_bytes((tmp_path / "train/dog/7.png").read_bytes())
    assert fingerprint.describe_change(
        renamed, sources.load_source(f"folder:{tmp_path}").fingerprint) == "6 -> 7 examples"


def test_digits_splits_differ():
    train, test = sources.load_source("digits", "train"), sources.load_source("digits", "test")
    assert train.fingerprint["examples"] == 1437 and test.fingerprint["examples"] == 360
    assert train.fingerprint == sources.load_source("digits", "train").fingerprint
