"""The SageMaker HPO definition and train.py's CLI must stay in step."""

import json
import re
from pathlib import Path

import pytest

from training.train import SEARCH_SPACE, parse_args

ROOT = Path(__file__).resolve().parents[2]


def test_every_tuned_hyperparameter_is_a_train_py_argument_with_the_right_type():
    hpo = json.loads((ROOT / "infra/sagemaker/hpo.json").read_text())
    ranges = hpo["ParameterRanges"]
    for kind in ("IntegerParameterRanges", "ContinuousParameterRanges", "CategoricalParameterRanges"):
        for param in ranges[kind]:
            value = param["Values"][0] if "Values" in param else param["MinValue"]
            args = parse_args([f"--{param['Name']}", value])
            assert str(getattr(args, param["Name"].replace("-", "_"))) in (
                value,
                str(float(value)),
                str(int(float(value))),
            )


def test_hpo_metric_regexes_parse_the_training_log_line():
    hpo = json.loads((ROOT / "infra/sagemaker/hpo.json").read_text())
    line = "INFO churnguard.train: validation_auc=0.78123 validation_log_loss=0.47712 epochs=17"
    found = {m["Name"]: float(re.search(m["Regex"], line).group(1)) for m in hpo["MetricDefinitions"]}
    assert found == {"validation:auc": 0.78123, "validation:log_loss": 0.47712}
    assert hpo["HyperParameterTuningJobObjective"]["MetricName"] in found


def test_random_search_space_only_names_known_hyperparameters():
    args = parse_args([])
    for name in SEARCH_SPACE:
        assert hasattr(args, name)


def test_unknown_hyperparameter_is_rejected_not_ignored():
    with pytest.raises(SystemExit):
        parse_args(["--lstm-unitz", "8"])


def test_learning_rate_schedule_is_off_by_default_and_follows_its_hyperparameters():
    import keras

    from training.model import HyperParameters, fit_callbacks
    from training.train import hyperparameters_from

    defaults = HyperParameters()
    assert (defaults.lr_patience, defaults.patience, defaults.learning_rate) == (0, 8, 1e-3)
    (stop,) = fit_callbacks(defaults)  # today's published models: early stopping only, constant rate
    assert isinstance(stop, keras.callbacks.EarlyStopping)
    assert (stop.monitor, stop.patience, stop.restore_best_weights) == ("val_loss", 8, True)

    hp = hyperparameters_from(parse_args(["--lr-patience", "3", "--lr-factor", "0.25", "--lr-min", "1e-6"]))
    stop, schedule = fit_callbacks(hp)
    assert isinstance(schedule, keras.callbacks.ReduceLROnPlateau)
    assert (schedule.monitor, schedule.patience, schedule.factor) == ("val_loss", 3, 0.25)
    assert schedule.min_lr == 1e-6


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], True),
        (["--no-baselines"], False),
        (["--baselines", "false"], False),
        (["--baselines", "True"], True),
    ],
)
def test_baselines_are_on_by_default_and_off_from_a_command_line_or_a_sagemaker_hyperparameter(
    argv, expected
):
    assert parse_args(argv).baselines is expected


def test_a_baselines_value_that_is_not_a_boolean_is_refused():
    with pytest.raises(SystemExit):
        parse_args(["--baselines", "maybe"])
