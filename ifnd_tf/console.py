"""The console scripts of pyproject.toml (ifnd-train, ...), each the `python -m` command it names.

Each calls runtime.prepare() before the command's module (and TensorFlow) is imported, as the
`python -m` forms do: the tcmalloc re-exec then runs `python <script> args` once more.
"""
import importlib

from ifnd_tf import runtime


def _run(module: str) -> None:
    runtime.prepare()
    from ifnd_tf import cli

    cli.run(importlib.import_module(module).main)


def train() -> None:
    _run("ifnd_tf.train")


def linear_eval() -> None:
    _run("ifnd_tf.linear_eval")


def finetune() -> None:
    _run("ifnd_tf.finetune")


def compare() -> None:
    _run("ifnd_tf.compare")
