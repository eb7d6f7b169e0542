"""The training image's `train` command against SageMaker's /opt/ml contract, without a container.

The entry runs as SageMaker would start it (a process, the /opt/ml tree relocated with SM_OPT_ML);
every case here fails before training starts, so they stay fast. Successful training through the
same code is covered by tests/integration/test_train_contract.py (and by running the image).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.sagemaker_entry import ContractError, OptML, channel_directories, train_arguments

ROOT = Path(__file__).resolve().parents[2]


def opt_ml_tree(tmp_path: Path, hyperparameters: dict[str, str], channels: dict[str, dict]) -> Path:
    """/opt/ml as SageMaker lays it out: config files (every hyperparameter a string), channel dirs."""
    root = tmp_path / "opt/ml"
    config = root / "input/config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    declared = {
        name: {
            "TrainingInputMode": "File",
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        }
        for name in channels
    }
    (config / "inputdataconfig.json").write_text(json.dumps(declared))
    for name, files in channels.items():
        directory = root / "input/data" / name
        directory.mkdir(parents=True)
        for file_name, content in files.items():
            (directory / file_name).write_text(content)
    return root


def run_entry(opt_ml: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SM_OPT_ML": str(opt_ml)}
    for name in ("SM_CHANNEL_TRAIN", "SM_CHANNEL_VALIDATION", "SM_MODEL_DIR", "SM_OUTPUT_DATA_DIR"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "training.sagemaker_entry"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def failure_reason(opt_ml: Path) -> str:
    return (opt_ml / "output/failure").read_text()


SMALL = {"epochs": "1", "verbose": "0"}
GOOD_HEADER = "user_id,timestamp,event_type,amount\n"


@pytest.mark.parametrize(
    ("channels", "reason"),
    [
        ({"train": {}}, "channel 'train' is empty"),
        ({"train": {"events.csv": "customer,day,value\n1,19970101,3.5\n"}}, "missing required column"),
        (
            {"train": {"events.csv": GOOD_HEADER + "1,1997-01-01,order,3\n"}, "validation": {}},
            "'validation' is empty",
        ),
        ({"validation": {"events.csv": GOOD_HEADER + "1,1997-01-01,order,3\n"}}, "no 'train' channel"),
        ({"train": {"events.csv": GOOD_HEADER + "1,1997-01-01,order,3\n"}, "test": {"x.csv": ""}}, "'test'"),
    ],
    ids=[
        "empty-train-channel",
        "wrong-columns",
        "empty-validation-channel",
        "no-train-channel",
        "extra-channel",
    ],
)
def test_bad_channel_fails_the_job_with_a_failure_file_naming_the_problem(tmp_path, channels, reason):
    opt_ml = opt_ml_tree(tmp_path, SMALL, channels)
    result = run_entry(opt_ml)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert reason in failure_reason(opt_ml), failure_reason(opt_ml)
    assert failure_reason(opt_ml).startswith("bad input: ")
    assert not (opt_ml / "model/metadata.json").exists()


def test_declared_channel_without_its_directory_fails(tmp_path):
    opt_ml = opt_ml_tree(tmp_path, SMALL, {"train": {"events.csv": GOOD_HEADER}})
    declared = {"train": {"TrainingInputMode": "File"}, "validation": {"TrainingInputMode": "File"}}
    (opt_ml / "input/config/inputdataconfig.json").write_text(json.dumps(declared))
    with pytest.raises(
        ContractError, match=r"'validation' is declared but .*input/data/validation does not exist"
    ):
        channel_directories(OptML(opt_ml))


def test_unknown_hyperparameter_fails_the_job_naming_it(tmp_path):
    opt_ml = opt_ml_tree(
        tmp_path,
        {**SMALL, "lstm-unitz": "8"},
        {"train": {"events.csv": GOOD_HEADER + "1,1997-01-01,order,3\n"}},
    )
    result = run_entry(opt_ml)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "lstm-unitz" in failure_reason(opt_ml)
    assert failure_reason(opt_ml).startswith("bad arguments: unknown arguments")


def raising(exc: Exception):
    def run(args):
        raise exc

    return run


def test_train_main_writes_the_reason_to_the_failure_file(tmp_path, monkeypatch):
    from churnguard.events import EventLogError
    from training import train

    failure = tmp_path / "output/failure"
    with pytest.raises(SystemExit) as exited:  # argparse's exit, as on the command line
        train.main(["--epochs=many"], failure_file=failure)
    assert exited.value.code == 2
    assert failure.read_text() == "bad arguments: argument --epochs: invalid int value: 'many'\n"

    monkeypatch.setattr(train, "run", raising(EventLogError("no orders")))
    assert train.main([], failure_file=failure) == 2
    assert failure.read_text() == "bad input: no orders\n"

    monkeypatch.setattr(train, "run", raising(KeyError("surprise")))
    assert train.main([]) == 1  # without a failure file: only the exit code and stderr
    assert train.main([], failure_file=failure) == 1
    assert failure.read_text() == "internal error: KeyError: 'surprise'\n"


def test_stale_failure_file_from_an_earlier_run_is_replaced(tmp_path):
    opt_ml = opt_ml_tree(tmp_path, SMALL, {"train": {}})
    (opt_ml / "output").mkdir()
    (opt_ml / "output/failure").write_text("an earlier run's reason")
    run_entry(opt_ml)
    assert "channel 'train' is empty" in failure_reason(opt_ml)


def test_hyperparameters_become_train_py_options_and_sagemaker_keys_are_dropped():
    hyperparameters = {
        "epochs": "15",
        "threshold-policy": "min_cost",
        "learning_rate": "0.003",  # `_` read as `-`
        "class-weight": '"balanced"',  # the SageMaker Python SDK JSON-encodes values
        "l2": "-1e-5",  # a value starting with - stays a value
        "patience": 3,  # not a string: a hand-written file
        "sagemaker_program": '"train.py"',
        "sagemaker_submit_directory": '"s3://bucket/source.tar.gz"',
        "_tuning_objective_metric": "validation:log_loss",
    }
    assert train_arguments(hyperparameters) == [
        "--epochs=15",
        "--threshold-policy=min_cost",
        "--learning-rate=0.003",
        "--class-weight=balanced",
        "--l2=-1e-5",
        "--patience=3",
    ]
    assert train_arguments({}) == []


def test_translated_hyperparameters_parse_with_train_py():
    from training.train import parse_args

    args = parse_args(
        train_arguments({"epochs": "15", "threshold-policy": "min_cost", "learning_rate": "3e-3"})
    )
    assert args.epochs == 15 and args.threshold_policy == "min_cost" and args.learning_rate == 0.003
    with pytest.raises(SystemExit):
        parse_args(train_arguments({"lstm-unitz": "8"}))


@pytest.mark.parametrize("key", ["model_dir", "model-dir", "train", "output-data-dir"])
def test_hyperparameters_cannot_redirect_the_container_paths(key):
    with pytest.raises(ContractError, match=key):
        train_arguments({key: "s3://bucket/model"})


def test_pipe_mode_channel_is_refused(tmp_path):
    opt_ml = opt_ml_tree(tmp_path, SMALL, {"train": {"events.csv": GOOD_HEADER}})
    (opt_ml / "input/config/inputdataconfig.json").write_text(
        json.dumps({"train": {"TrainingInputMode": "Pipe"}})
    )
    with pytest.raises(ContractError, match="Pipe"):
        channel_directories(OptML(opt_ml))


def test_without_inputdataconfig_the_channel_directories_present_are_used(tmp_path):
    opt_ml = opt_ml_tree(tmp_path, SMALL, {"train": {"a.csv": "x"}, "validation": {"b.csv": "y"}})
    (opt_ml / "input/config/inputdataconfig.json").unlink()
    assert channel_directories(OptML(opt_ml)) == {
        "train": opt_ml / "input/data/train",
        "validation": opt_ml / "input/data/validation",
    }
