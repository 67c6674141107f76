"""MoCo v2 against MoCo v2 + IFND with the same flags and seed, in one table.

    python -m ifnd_tf.compare --flagfile=flags/fashion_mnist.cfg --model_dir=runs/compare

Trains <model_dir>/moco (--ifnd=false) and <model_dir>/ifnd (--ifnd=true), every other flag as
given, then probes each with ifnd_tf.linear_eval; every step runs in its own process, with the
same command-line flags. A step whose output already exists is read, not run again
(export/encoder.keras of a run, linear_eval/result.json): delete a run folder to redo it.
Prints the table and writes it to <model_dir>/compare.md and compare.json:
  kNN top-1     the kNN monitor at the last epoch (test split, query backbone)
  linear top-1  the linear probe (test split)
  FN precision / recall   of the detected false negatives at the last epoch (IFND only)
  train time    sum of the epochs' wall time (clustering included, kNN monitor and export not)
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import json
import os
import subprocess
import sys

from absl import app

from ifnd_tf import callbacks, cli, config
from ifnd_tf.config import FLAGS

VARIANTS = (("MoCo v2", "moco", "--ifnd=false"), ("MoCo v2 + IFND", "ifnd", "--ifnd=true"))
COLUMNS = (("kNN top-1", "knn_top1", "{:.4f}"), ("linear top-1", "linear_top1", "{:.4f}"),
           ("FN precision", "fn_precision", "{:.3f}"), ("FN recall", "fn_recall", "{:.3f}"),
           ("train time", "train_seconds", "{:.0f} s"))


class StepError(RuntimeError):
    """A training or probing process failed; the message is its last error line."""


def run_step(module: str, args: list[str]) -> None:
    """python -m module args, output shown as it comes; stderr's last line if it fails."""
    print(f"+ python -m {module} {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", module, *args], stderr=subprocess.PIPE,
                            text=True, check=False)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        raise StepError(f"{module} failed: {lines[-1]}")


def summarize(run_dir: str) -> dict:
    """The table row of one run, read from its metrics.csv and linear_eval/result.json."""
    history = callbacks.read_metrics(os.path.join(run_dir, "metrics.csv"))
    with open(os.path.join(run_dir, "linear_eval", "result.json")) as f:
        probe = json.load(f)
    last = history[-1] if history else {}
    return {"epochs": len(history), "knn_top1": last.get("knn_top1"),
            "linear_top1": probe["top1"], "linear_top5": probe["top5"],
            "fn_precision": last.get("fn_precision"), "fn_recall": last.get("fn_recall"),
            "train_seconds": sum(r.get("seconds", 0.0) for r in history)}


def format_table(rows: dict[str, dict]) -> str:
    """A Markdown table, one line per run; '–' where a number was not measured."""
    lines = ["| run | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for name, row in rows.items():
        cells = ["–" if row.get(key) is None else fmt.format(row[key]) for _, key, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(flag_args: list[str]) -> dict[str, dict]:
    """Train (or read) both variants, probe (or read) both, print and write the table."""
    rows = {}
    for name, folder, ifnd_flag in VARIANTS:
        run_dir = os.path.join(FLAGS.model_dir, folder)
        saved_model = os.path.join(run_dir, "export", "saved_model")
        if not os.path.exists(os.path.join(run_dir, "export", "encoder.keras")):
            run_step("ifnd_tf.train", [*flag_args, f"--model_dir={run_dir}", ifnd_flag,
                                       "--export=true"])
        if not os.path.exists(os.path.join(run_dir, "linear_eval", "result.json")):
            run_step("ifnd_tf.linear_eval", [*flag_args, f"--model_dir={run_dir}", ifnd_flag,
                                             f"--saved_model={saved_model}",
                                             f"--eval_dir={os.path.join(run_dir, 'linear_eval')}"])
        rows[name] = summarize(run_dir)
    table = format_table(rows)
    print(table, flush=True)
    with open(os.path.join(FLAGS.model_dir, "compare.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(FLAGS.model_dir, "compare.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return rows


def run_from_command_line() -> dict[str, dict]:
    """`run` with this process's own command-line flags, passed on to every step."""
    config.validate_eval_flags()
    os.makedirs(FLAGS.model_dir, exist_ok=True)
    return run(sys.argv[1:])


main = cli.main("ifnd_tf.compare", run_from_command_line, expected=(StepError,))


if __name__ == "__main__":
    app.run(main)
