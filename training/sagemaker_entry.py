"""The training image's ``train`` command: SageMaker's training-container contract around train.py.

SageMaker starts the job with ``docker run IMAGE train``; ``/usr/local/bin/train`` runs
``python -m training.sagemaker_entry``. What SageMaker provides and expects, under ``/opt/ml``:

* ``input/config/hyperparameters.json``: ``{"name": "value"}``, every value a string. Names are
  train.py's option names (``epochs``, ``threshold-policy``; an ``_`` is read as ``-``) and become
  ``--name=value``. Keys starting with ``sagemaker_`` or ``_`` (added by the SDKs and by tuning jobs)
  are dropped; everything else goes to train.py, so an unknown or malformed one fails the job. A
  value the SageMaker Python SDK JSON-encoded (``"\\"min_cost\\""``) is decoded first.
* ``input/config/inputdataconfig.json`` (if present): the declared channels. ``train`` is required,
  ``validation`` optional; a declared channel whose directory is missing or empty, any other
  channel, or Pipe mode fails the job. Without the file the channels are the directories present.
* ``input/data/<channel>/``: the event files -> ``SM_CHANNEL_TRAIN`` / ``SM_CHANNEL_VALIDATION``.
* ``model/`` -> ``SM_MODEL_DIR`` (uploaded as model.tar.gz); ``output/data/`` ->
  ``SM_OUTPUT_DATA_DIR`` (the report copy, uploaded as output.tar.gz).
* On any failure: the reason in ``output/failure`` (SageMaker shows it as the job's FailureReason)
  and a non-zero exit: 2 bad input or hyperparameters, 3 export failed, 1 internal error, 143 stopped.

``SM_OPT_ML`` overrides the ``/opt/ml`` root, so tests run this without a container:
``SM_OPT_ML=/tmp/x/opt/ml python -m training.sagemaker_entry``.

Standard library only at import time: train.py (pandas, TensorFlow) is imported inside ``main``, so
even a broken installation ends in a failure file rather than a bare traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

OPT_ML_ENV = "SM_OPT_ML"
DEFAULT_OPT_ML = "/opt/ml"
CHANNELS = ("train", "validation")  # train required
IGNORED_PREFIXES = ("sagemaker_", "_")
# train.py options the container contract sets from /opt/ml; as hyperparameters they would point
# the job elsewhere (the SDK's TensorFlow estimator, for one, adds an S3 ``model_dir``).
RESERVED = ("train", "validation", "model-dir", "output-data-dir")
EXIT_BAD_INPUT = 2
EXIT_INTERNAL_ERROR = 1
EXIT_STOPPED = 128 + signal.SIGTERM


class ContractError(Exception):
    """The job's configuration or channels do not fit this image; the message says how."""


class Stopped(BaseException):  # not an Exception: passes train.py's catch-all, its cleanup still runs
    """SIGTERM: SageMaker stops the job (StopTrainingJob, spot interruption, max runtime)."""


@dataclass(frozen=True)
class OptML:
    root: Path

    @classmethod
    def from_env(cls) -> OptML:
        return cls(Path(os.environ.get(OPT_ML_ENV) or DEFAULT_OPT_ML))

    @property
    def hyperparameters(self) -> Path:
        return self.root / "input/config/hyperparameters.json"

    @property
    def input_data_config(self) -> Path:
        return self.root / "input/config/inputdataconfig.json"

    def channel(self, name: str) -> Path:
        return self.root / "input/data" / name

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def output_data(self) -> Path:
        return self.root / "output/data"

    @property
    def failure(self) -> Path:
        return self.root / "output/failure"


def write_failure(path: str | os.PathLike | None, message: str) -> None:
    """Write the failure reason (no-op without a path); never masks the failure being reported."""
    if path is None:
        return
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(message.rstrip("\n") + "\n")
    except OSError as exc:
        print(f"churnguard-train: could not write {path}: {exc}", file=sys.stderr)


def _read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ContractError(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(value, dict):
        raise ContractError(f"{path.name} must hold a JSON object, got {type(value).__name__}")
    return value


def _argument_value(value: object) -> str:
    if not isinstance(value, str):  # a hand-written hyperparameters.json with numbers
        return json.dumps(value)
    if len(value) >= 2 and value[0] == value[-1] == '"':  # SDK estimators JSON-encode each value
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        if isinstance(decoded, str):
            return decoded
    return value


def train_arguments(hyperparameters: Mapping[str, object]) -> list[str]:
    """SageMaker hyperparameters -> train.py's argv (``--name=value``, so values may start with -)."""
    argv = []
    for key, value in hyperparameters.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        option = key.replace("_", "-")
        if option in RESERVED:
            raise ContractError(
                f"hyperparameter {key!r} is not accepted: the container sets it from /opt/ml "
                "(channels input/data/<channel>, model/, output/data/)"
            )
        argv.append(f"--{option}={_argument_value(value)}")
    return argv


def declared_channels(opt_ml: OptML) -> list[str]:
    """The channels inputdataconfig.json declares; without it, the known channel directories present."""
    if not opt_ml.input_data_config.exists():
        return [name for name in CHANNELS if opt_ml.channel(name).exists()]
    config = _read_json_object(opt_ml.input_data_config)
    for name, channel in config.items():
        mode = channel.get("TrainingInputMode", "File") if isinstance(channel, dict) else "File"
        if mode == "Pipe":
            raise ContractError(f"channel {name!r} uses Pipe input mode; this image reads File or FastFile")
    return list(config)


def channel_directories(opt_ml: OptML) -> dict[str, Path]:
    """Each declared channel's directory, checked: present, holding at least one file."""
    declared = declared_channels(opt_ml)
    unknown = [name for name in declared if name not in CHANNELS]
    if unknown:
        raise ContractError(
            f"unexpected channel(s) {unknown}: this image reads 'train' and optional 'validation'"
        )
    if "train" not in declared:
        raise ContractError(f"no 'train' channel: expected event files under {opt_ml.channel('train')}")
    directories = {}
    for name in declared:
        directory = opt_ml.channel(name)
        if not directory.is_dir():
            raise ContractError(f"channel {name!r} is declared but {directory} does not exist")
        if not any(path.is_file() for path in directory.rglob("*")):
            raise ContractError(f"channel {name!r} is empty: no files under {directory}")
        directories[name] = directory
    return directories


def prepare(opt_ml: OptML) -> list[str]:
    """Check the inputs, point train.py's SM_* variables at /opt/ml; returns train.py's argv."""
    hyperparameters = _read_json_object(opt_ml.hyperparameters) if opt_ml.hyperparameters.exists() else {}
    argv = train_arguments(hyperparameters)
    channels = channel_directories(opt_ml)
    for name in CHANNELS:
        variable = f"SM_CHANNEL_{name.upper()}"
        if name in channels:
            os.environ[variable] = str(channels[name])
        else:
            os.environ.pop(variable, None)
    opt_ml.model.mkdir(parents=True, exist_ok=True)
    opt_ml.output_data.mkdir(parents=True, exist_ok=True)
    os.environ["SM_MODEL_DIR"] = str(opt_ml.model)
    os.environ["SM_OUTPUT_DATA_DIR"] = str(opt_ml.output_data)
    print(f"churnguard-train: channels {sorted(channels)}; train.py {' '.join(argv)}", flush=True)
    return argv


def _stop(signum: int, frame: object) -> None:
    raise Stopped(f"received signal {signal.Signals(signum).name}")


def main() -> int:
    opt_ml = OptML.from_env()
    with contextlib.suppress(OSError):  # a stale reason from an earlier local run is not this run's
        opt_ml.failure.unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, _stop)  # PID 1 in the container: no default SIGTERM action
    try:
        argv = prepare(opt_ml)
        from training import train

        code = train.main(argv, failure_file=opt_ml.failure)
    except ContractError as exc:
        print(f"churnguard-train: error: {exc}", file=sys.stderr)
        write_failure(opt_ml.failure, f"bad input: {exc}")
        return EXIT_BAD_INPUT
    except SystemExit as exc:  # argparse on a bad hyperparameter: train.main wrote the reason
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_INTERNAL_ERROR)
    except Stopped as exc:
        print(f"churnguard-train: stopped: {exc}", file=sys.stderr)
        write_failure(opt_ml.failure, f"stopped: {exc}")
        return EXIT_STOPPED
    except Exception as exc:  # e.g. an import failing in a broken image
        traceback.print_exc()
        message = f"internal error: {type(exc).__name__}: {exc}"
        print(f"churnguard-train: {message}", file=sys.stderr)
        write_failure(opt_ml.failure, message)
        return EXIT_INTERNAL_ERROR
    if code and not opt_ml.failure.exists():
        write_failure(opt_ml.failure, f"training failed with exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
