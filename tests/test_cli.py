import pytest

from ifnd_tf import cli, errors


@pytest.mark.parametrize("error", [errors.ConfigError("--epochs must be >= 1, got 0"),
                                   errors.DataError("--dataset=x: no such folder"),
                                   errors.DivergenceError("loss is nan at step 3")])
def test_expected_errors_end_the_program_with_one_line(error):
    def run():
        raise error

    with pytest.raises(SystemExit) as stop:
        cli.main("ifnd_tf.x", run)([])
    assert stop.value.code == f"ifnd_tf.x: error: {error}"


def test_a_command_adds_its_own_errors_and_bugs_keep_their_traceback():
    class StepError(RuntimeError):
        pass

    def failing_step():
        raise StepError("ifnd_tf.train failed")

    with pytest.raises(SystemExit, match="ifnd_tf.compare: error: ifnd_tf.train failed"):
        cli.main("ifnd_tf.compare", failing_step, expected=(StepError,))([])
    with pytest.raises(KeyError):
        cli.main("ifnd_tf.x", lambda: {}["missing"])([])
