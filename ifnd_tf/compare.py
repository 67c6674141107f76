"""MoCo v2 against MoCo v2 + IFND (and other variants) with the same flags, in one table.

    python -m ifnd_tf.compare --flagfile=flags/fashion_mnist.cfg --model_dir=runs/compare
    python -m ifnd_tf.compare ... --seeds=0,1,2 --variants=moco,ifnd,oracle \
        --variant=agreement:--fn_confidence=agreement

Trains <model_dir>/moco (--ifnd=false) and <model_dir>/ifnd (--ifnd=true), every other flag as
given, then probes each with ifnd_tf.linear_eval; every step runs in its own process, with the
same command-line flags. With --seeds, each variant is trained once per seed in
<model_dir>/<variant>/seed<s>. A step whose output already exists is read, not run again
(export/encoder.keras of a run, linear_eval/result.json): delete a run folder to redo it, or add
a seed to grow the table. Says first what it will run (variants, seeds, folder); prints the
table and writes it to <model_dir>/compare.md and compare.json (with --seeds: compare.json
holds every run, the mean ± sd per variant, the paired per-seed differences against MoCo v2
and the verdicts). Columns:
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
import re
import statistics
import subprocess
import sys

from ifnd_tf import callbacks, cli, command_settings, config, run_directory

# key: (table name, short name in verdicts, flags). The reference of the paired differences.
BUILTIN_VARIANTS = {"moco": ("MoCo v2", "MoCo", ["--ifnd=false"]),
                    "ifnd": ("MoCo v2 + IFND", "IFND", ["--ifnd=true"]),
                    "oracle": ("oracle (true labels)", "oracle", ["--ifnd=true", "--fn_oracle=true"]),
                    # The false-negative methods of the field, each with its own defaults.
                    "debiased": ("debiased loss (Chuang et al.)", "debiased",
                                 ["--ifnd=false", "--class_prior=0.1"]),
                    "fnc": ("FNC-style top-k + threshold", "FNC",
                            ["--ifnd=true", "--fn_detector=top_k"]),
                    "hcsc": ("HCSC-style soft drop", "HCSC",
                             ["--ifnd=true", "--fn_detector=soft_drop"]),
                    "glofnd": ("GloFND learned threshold", "GloFND",
                               ["--ifnd=true", "--fn_detector=learned_threshold"])}
REFERENCE = "moco"
VERDICT_METRICS = (("kNN", "knn_top1"), ("linear", "linear_top1"))
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
            "train_seconds": sum(r.get("seconds", 0.0) for r in history),
            "oracle": last.get("oracle") == 1.0}


def format_table(rows: dict[str, dict]) -> str:
    """A Markdown table, one line per run; '–' where a number was not measured."""
    lines = ["| run | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for name, row in rows.items():
        cells = ["–" if row.get(key) is None else fmt.format(row[key]) for _, key, fmt in COLUMNS]
        marked = f"{name} (oracle)" if row.get("oracle") and "oracle" not in name else name
        lines.append(f"| {marked} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_variants(keys: list[str], definitions: list[str]) -> dict[str, tuple]:
    """{key: (table name, short name, flags)} from --variants and --variant=name:--f=v,--g=w.

    A definition's flags are split at commas that start a new flag, so values may hold commas
    (--num_clusters=10,20)."""
    defined = {}
    for text in definitions:
        name, sep, flag_text = text.partition(":")
        flag_list = re.split(r",(?=--)", flag_text) if flag_text else []
        if not sep or not re.fullmatch(r"[\w.-]+", name) or not all(
                f.startswith("--") for f in flag_list):
            raise config.ConfigError(f"--variant={text!r}: expected name:--flag=value,--flag=value")
        defined[name] = (name, name, flag_list)
    variants = {}
    for key in [*keys, *(k for k in defined if k not in keys)]:
        if key not in BUILTIN_VARIANTS and key not in defined:
            raise config.ConfigError(f"--variants: unknown variant {key!r} (built in: "
                                     f"{', '.join(BUILTIN_VARIANTS)}; or define it with --variant)")
        variants[key] = defined.get(key) or BUILTIN_VARIANTS[key]
    return variants


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None below two values)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_differences(reference: dict, other: dict, key: str) -> dict | None:
    """other - reference of `key` over the seeds both have measured: per seed, mean ± sd, and
    how many seeds are ahead (> 0). None when no seed has both."""
    seeds = sorted(s for s in reference if s in other and reference[s].get(key) is not None
                   and other[s].get(key) is not None)
    if not seeds:
        return None
    diffs = [other[s][key] - reference[s][key] for s in seeds]
    mean, sd = mean_sd(diffs)
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "sd": sd,
            "ahead": sum(d > 0 for d in diffs), "n": len(diffs)}


def verdict(short_name: str, metric: str, paired: dict, reference_name: str = "MoCo") -> str:
    """One line, in accuracy points: 'IFND − MoCo kNN: +0.8 ± 0.2, 3/3 seeds ahead'."""
    spread = "" if paired["sd"] is None else f" ± {100 * paired['sd']:.1f}"
    return (f"{short_name} − {reference_name} {metric}: {100 * paired['mean']:+.1f}{spread}, "
            f"{paired['ahead']}/{paired['n']} seeds ahead")


def summarize_seeds(runs: dict[str, dict]) -> dict:
    """Per column: mean, sd and n over the seeds of one variant (columns never measured left out)."""
    result = {}
    for _, key, _ in COLUMNS:
        values = [row[key] for row in runs.values() if row.get(key) is not None]
        if values:
            mean, sd = mean_sd(values)
            result[key] = {"mean": mean, "sd": sd, "n": len(values)}
    return result


def format_summary(names: dict[str, str], summaries: dict[str, dict]) -> str:
    """Markdown: mean ± sd per variant and column ('–' = not measured)."""
    lines = ["| variant | seeds | " + " | ".join(title for title, _, _ in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for key, summary in summaries.items():
        cells = []
        for _, column, fmt in COLUMNS:
            if column not in summary:
                cells.append("–")
                continue
            cell = fmt.format(summary[column]["mean"])
            if summary[column]["sd"] is not None:
                cell += " ± " + fmt.format(summary[column]["sd"]).replace(" s", "")
            cells.append(cell)
        seeds = max((s["n"] for s in summary.values()), default=0)
        lines.append(f"| {names[key]} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_reused(run_dir: str, expected: config.RunConfig,
                 probe: command_settings.EvalConfig) -> None:
    """A run directory holding a run or a probe of other settings is refused in one line
    (its numbers would stand in the table for settings they were not made with)."""
    flags_json = os.path.join(run_dir, "flags.json")
    if os.path.exists(flags_json):
        config.check_same_run(run_directory.read_record(flags_json, "flags"), expected.flat(),
                              run_dir)
    result = os.path.join(run_dir, "linear_eval", "result.json")
    if os.path.exists(result):
        saved = run_directory.read_record(result, "probe result")
        wanted = {"linear_epochs": ("epochs", probe.linear_epochs),
                  "linear_learning_rate": ("learning_rate", probe.linear_learning_rate),
                  "eval_schedule": ("schedule", probe.eval_schedule),
                  "eval_batch_size": ("batch_size", probe.eval_batch_size)}
        changed = [f"--{flag}: {saved.get(key)!r} -> {value!r}"
                   for flag, (key, value) in wanted.items() if saved.get(key) != value]
        if changed:
            raise config.ConfigError(f"{result} was probed with other flags "
                                     f"({'; '.join(changed)}); delete it or use a new "
                                     "--model_dir")


def trained_with(base: config.RunConfig, variants: dict[str, tuple]) -> str:
    """The run-defining flags every run shares (those not at their default), then each
    variant's own: what the table's numbers were trained with."""
    defaults, ours = config.RunConfig().flat(), base.flat()
    shared = [f"--{name}={_flag_text(ours[name])}" for name in config.RUN_DEFINING_FLAGS
              if ours[name] != defaults[name] and name != "seed"]
    own = [f"{key}: {' '.join(flags) or '(none)'}" for key, (_, _, flags) in variants.items()]
    return ("Trained with (run-defining flags not at their default): "
            + (" ".join(shared) or "(all defaults)") + ". Variants: " + "; ".join(own) + ".")


def _flag_text(value) -> str:
    return ",".join(value) if isinstance(value, list) else str(value).lower() \
        if isinstance(value, bool) else str(value)


def run_variant(flag_args: list[str], run_dir: str, variant_flags: list[str]) -> dict:
    """Train (or read) one run, probe (or read) it, return its table row."""
    saved_model = os.path.join(run_dir, "export", "saved_model")
    if not os.path.exists(os.path.join(run_dir, "export", "encoder.keras")):
        run_step("ifnd_tf.train", [*flag_args, f"--model_dir={run_dir}", *variant_flags,
                                   "--export=true"])
    if not os.path.exists(os.path.join(run_dir, "linear_eval", "result.json")):
        run_step("ifnd_tf.linear_eval", [*flag_args, f"--model_dir={run_dir}", *variant_flags,
                                         f"--saved_model={saved_model}",
                                         f"--eval_dir={os.path.join(run_dir, 'linear_eval')}"])
    return summarize(run_dir)


def _write(model_dir: str, name: str, text: str) -> None:
    with open(os.path.join(model_dir, name), "w") as f:
        f.write(text)


def verdicts(variants: dict[str, tuple], runs: dict[str, dict]) -> tuple[dict, list[str]]:
    """Paired differences against MoCo v2 of every other variant, and their verdict lines."""
    paired, lines = {}, []
    if REFERENCE not in runs:
        return paired, lines
    for key, (_, short, _) in variants.items():
        if key == REFERENCE:
            continue
        for metric, column in VERDICT_METRICS:
            result = paired_differences(runs[REFERENCE], runs[key], column)
            if result is not None:
                paired.setdefault(key, {})[column] = result
                lines.append(verdict(short, metric, result))
    return paired, lines


def plan_line(variants: dict[str, tuple], listed: list[str], seeds: list[int],
              model_dir: str) -> str:
    """What the call will train or read, said first: a definition appended from --variant
    (a flagfile's, say) is named as such, so no run is a surprise."""
    names = [key if key in listed else f"{key} (appended from --variant)" for key in variants]
    where = f"seeds {', '.join(map(str, seeds))}" if seeds else "one run each"
    return f"compare: {', '.join(names)}; {where}; in {model_dir}"


def run(flag_args: list[str], model_dir: str, plan: command_settings.CompareConfig,
        default_seed: int = 0, base: config.RunConfig | None = None,
        probe: command_settings.EvalConfig | None = None) -> dict[str, dict]:
    """Train (or read) every variant at every seed, probe (or read) each, print and write.
    flag_args: the flags every step gets (this command's own); default_seed: the one run per
    variant when plan.seeds is empty; base, probe: the settings flag_args stand for, which a
    run or probe found on disk must have been made with (check_reused)."""
    probe = probe or command_settings.EvalConfig()
    variants = parse_variants(list(plan.variants), list(plan.variant))
    try:
        seeds = [int(s) for s in plan.seeds]
    except ValueError as e:
        raise config.ConfigError(f"--seeds must be integers, got {list(plan.seeds)}") from e
    print(plan_line(variants, list(plan.variants), seeds, model_dir), flush=True)
    runs: dict[str, dict] = {}  # variant key -> {seed: row}
    for key, (_, _, variant_flags) in variants.items():
        for seed in seeds or [default_seed]:
            run_dir = os.path.join(model_dir, key, f"seed{seed}") if seeds else \
                os.path.join(model_dir, key)
            seed_flags = [f"--seed={seed}"] if seeds else []
            if base is not None:
                check_reused(run_dir, base.replace(**cli.parse_flag_args(
                    [*variant_flags, *seed_flags])), probe)
            runs.setdefault(key, {})[seed] = run_variant(flag_args, run_dir,
                                                         [*variant_flags, *seed_flags])
    paired, lines = verdicts(variants, runs)
    if not seeds:  # one run per variant: the table of runs, as before
        rows = {variants[key][0]: next(iter(r.values())) for key, r in runs.items()}
        text = format_table(rows) + ("\n\n" + "\n".join(lines) if lines else "") + "\n"
        summary: dict = rows
    else:
        rows = {f"{variants[key][0]} · seed {seed}": row
                for key, r in runs.items() for seed, row in r.items()}
        summaries = {key: summarize_seeds(r) for key, r in runs.items()}
        names = {k: f"{v[0]} (oracle)" if "oracle" not in v[0] and any(
            row.get("oracle") for row in runs[k].values()) else v[0] for k, v in variants.items()}
        text = (format_summary(names, summaries) + "\n\n"
                + "\n".join(lines) + "\n\nRuns:\n\n" + format_table(rows) + "\n")
        summary = {"runs": {k: {str(s): row for s, row in r.items()} for k, r in runs.items()},
                   "summary": summaries, "paired": paired, "verdicts": lines}
    if base is not None:
        text += "\n" + trained_with(base, variants) + "\n"
    print(text, end="", flush=True)
    _write(model_dir, "compare.md", text)
    _write(model_dir, "compare.json", json.dumps(summary, indent=2))
    return summary


def run_from_command_line() -> dict[str, dict]:
    """`run` with this process's own command-line flags, passed on to every step."""
    cfg = cli.run_config_from_flags()
    probe = cli.section_from_flags(command_settings.EvalConfig).validate()
    os.makedirs(cfg.run.model_dir, exist_ok=True)
    return run(sys.argv[1:], cfg.run.model_dir,
               cli.section_from_flags(command_settings.CompareConfig), cfg.run.seed,
               base=cfg, probe=probe)


main = cli.main("ifnd_tf.compare", run_from_command_line, expected=(StepError,))


if __name__ == "__main__":
    cli.run(main)
