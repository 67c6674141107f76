"""Pre-train an encoder with MoCo v2 + IFND: the command line of `pretrain.pretrain`.

    python -m ifnd_tf.train --flagfile=flags/fashion_mnist.cfg --model_dir=/tmp/run

Re-running the same command resumes from the last completed epoch in --model_dir.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import sys

from ifnd_tf import cli, command_settings, preemption
from ifnd_tf.pretraining import pretrain


def run() -> str | None:
    """Train (or resume) and export; returns the SavedModel directory if exported."""
    cfg = cli.run_config_from_flags()
    cli.section_from_flags(command_settings.EvalConfig).validate()  # before anything is written
    try:
        return pretrain(cfg, extra_record=cli.command_record()).saved_model
    except preemption.Preempted as e:  # not an error: its own line and exit code
        print(f"ifnd_tf.train: {e}", file=sys.stderr, flush=True)
        sys.exit(preemption.PREEMPTED_EXIT_CODE)


# OSError: e.g. a full disk or an unwritable file, named in its message.
main = cli.main("ifnd_tf.train", run, expected=(OSError,))


if __name__ == "__main__":
    cli.run(main)
