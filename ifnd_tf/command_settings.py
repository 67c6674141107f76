"""Settings of the evaluation and compare commands (not of a pre-training run): fields with
defaults and help, like config.py's sections, from which cli.py defines their flags."""
import dataclasses

from ifnd_tf.config import _check, setting
from ifnd_tf.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The evaluation commands: linear_eval and finetune (and the probes compare runs)."""

    saved_model: str | None = setting(None, "linear_eval / finetune: a run's export/saved_model "
                                      "(encoder.keras next to it is loaded); default "
                                      "<--model_dir>/export/saved_model.")
    eval_dir: str | None = setting(None, "Where linear_eval / finetune write result.json; "
                                   "default <run>/linear_eval or <run>/finetune.")
    eval_batch_size: int = setting(256, "Batch size of the linear probe and fine-tuning.")
    eval_schedule: str = setting("cosine", "Learning-rate schedule of the probe and fine-tuning "
                                 "(step: x0.1 at 60%, 80%).", choices=("cosine", "step"))
    linear_epochs: int = setting(100, "Epochs of the linear probe.")
    linear_learning_rate: float = setting(0.1, "SGD learning rate of the linear probe.")
    finetune_fractions: tuple[str, ...] = setting(("0.01", "0.1"), "Fractions of the train split "
                                                  "used as labelled data (class-balanced, "
                                                  "seeded).")
    finetune_epochs: tuple[str, ...] = setting(("60", "30"), "Fine-tuning epochs, one per "
                                               "fraction.")
    finetune_learning_rate: float = setting(0.05, "SGD learning rate of fine-tuning.")

    def validate(self) -> "EvalConfig":
        _check(self.eval_batch_size >= 1,
               f"--eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _check(self.linear_epochs >= 1, f"--linear_epochs must be >= 1, got {self.linear_epochs}")
        _check(self.linear_learning_rate > 0,
               f"--linear_learning_rate must be > 0, got {self.linear_learning_rate}")
        _check(self.finetune_learning_rate > 0,
               f"--finetune_learning_rate must be > 0, got {self.finetune_learning_rate}")
        self.finetune_plan()
        return self

    def finetune_plan(self) -> list[tuple[float, int]]:
        """(labelled fraction, epochs) pairs."""
        try:
            fractions = [float(x) for x in self.finetune_fractions]
            epochs = [int(x) for x in self.finetune_epochs]
        except ValueError as e:
            raise ConfigError(f"--finetune_fractions / --finetune_epochs must be numbers: {e}") \
                from e
        _check(len(fractions) == len(epochs) > 0,
               f"--finetune_epochs needs one value per --finetune_fractions value, got "
               f"{list(self.finetune_epochs)} for {list(self.finetune_fractions)}")
        _check(all(0 < x <= 1 for x in fractions),
               f"--finetune_fractions must be in (0, 1], got {list(self.finetune_fractions)}")
        _check(all(e >= 1 for e in epochs),
               f"--finetune_epochs must be >= 1, got {list(self.finetune_epochs)}")
        return list(zip(fractions, epochs))


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """ifnd_tf.compare: which variants, which seeds."""

    seeds: tuple[str, ...] = setting((), "compare: train every variant with each of these seeds "
                                     "(<model_dir>/<variant>/seed<s>) and report mean ± sd and "
                                     "paired differences against MoCo v2; empty = one run per "
                                     "variant with --seed, in <model_dir>/<variant>.")
    variants: tuple[str, ...] = setting(("moco", "ifnd"), "compare: the variants, in table "
                                        "order: moco, ifnd, oracle (--fn_oracle) or a name "
                                        "defined with --variant.")
    variant: tuple[str, ...] = setting((), "compare: a named flag set, "
                                       "name:--flag=v,--flag2=v (repeatable); appended to "
                                       "--variants unless listed there.", multi=True)
