"""pretrain's own pieces: the run record (flags.json) and the export's guarantees."""
import json
import os
import signal

import pytest
import tensorflow as tf

from ifnd_tf import builder, config, encoders, errors, preemption, pretraining


def _checkpointed(run_dir):
    checkpoint = tf.train.Checkpoint(value=tf.Variable(1.0))
    tf.train.CheckpointManager(checkpoint, str(run_dir / "checkpoints"), 1).save()


def test_flags_json_deleted_or_damaged_with_checkpoints_is_refused(tmp_path):
    cfg = config.RunConfig()
    record = pretraining.run_record(cfg, None, builder.FROM_CONFIG)
    pretraining.write_record(str(tmp_path), cfg, record)
    _checkpointed(tmp_path)
    pretraining.write_record(str(tmp_path), cfg, record)  # the same run: resumes
    (tmp_path / "flags.json").unlink()
    with pytest.raises(errors.RunDirError, match="flags.json is missing but the run has "
                                                 "checkpoints: without the flags they were made "
                                                 "with, a resume cannot be checked"):
        pretraining.write_record(str(tmp_path), cfg, record)
    (tmp_path / "flags.json").write_text("{not json")
    with pytest.raises(errors.RunDirError, match="flags.json is damaged"):
        pretraining.write_record(str(tmp_path), cfg, record)


def test_a_users_encoder_or_detector_is_recorded_and_a_changed_one_refused(tmp_path):
    cfg = config.RunConfig()
    encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=8)
    record = pretraining.run_record(cfg, encoder, None)
    assert record["backbone"] == "custom:encoder" and record["fn_detector"] == "none"
    assert record["ifnd"] is False
    pretraining.write_record(str(tmp_path), cfg, record)
    _checkpointed(tmp_path)
    with pytest.raises(config.ConfigError, match="--backbone: 'custom:encoder' -> 'small'"):
        pretraining.write_record(str(tmp_path), cfg,
                                 pretraining.run_record(cfg, None, None))
    assert json.loads((tmp_path / "flags.json").read_text())["backbone"] == "custom:encoder"


class _Model:
    encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=8)


def test_a_write_error_during_the_export_is_one_line(tmp_path):
    (tmp_path / "export").write_text("a file where the export folder goes")
    with pytest.raises(errors.RunDirError,
                       match=f"^cannot write the export to {tmp_path}/export: .*; the "
                             "checkpoints are intact: free space and run the same command"):
        pretraining.export_after_training(_Model(), str(tmp_path), 12)


def test_a_stop_signal_during_the_export_ends_as_a_preemption(tmp_path, monkeypatch):
    real = pretraining.export.export_encoder

    def interrupted(encoder, export_dir):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-export: handled after it
        return real(encoder, export_dir)

    monkeypatch.setattr(pretraining.export, "export_encoder", interrupted)
    with pytest.raises(preemption.Preempted,
                       match="^stopped by SIGTERM after step 12; the export was finished first"):
        pretraining.export_after_training(_Model(), str(tmp_path), 12)
    assert (tmp_path / "export" / "saved_model" / "saved_model.pb").exists()
