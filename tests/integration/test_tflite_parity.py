"""No training/serving skew: the exported TFLite model, fed through the serving route, scores
customers exactly like the Keras model fed by the training pipeline."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnguard.features import FeatureSpec, build_raw_features
from churnguard.scorer import TFLiteScorer
from churnguard.tabular import customer_events, to_epoch_seconds
from tests.helpers import cached_venv
from training.export import DYNAMIC_RANGE_TOLERANCE, FLOAT32_TOLERANCE

ROOT = Path(__file__).resolve().parents[2]


def serving_inputs(data, spec_json: str, user_ids, events=None):
    """What a scoring Lambda does: raw events of these customers + spec from JSON -> model inputs."""
    spec = FeatureSpec.from_json(spec_json)
    events = data.source.events if events is None else events
    customers = customer_events(
        events[events["user_id"].isin(user_ids)], user_ids=np.asarray(user_ids, dtype=object)
    )
    as_of = np.full(len(user_ids), to_epoch_seconds(data.protocol.as_of))
    raw = build_raw_features(customers.arrays, as_of, event_types=spec.event_types, config=spec.config)
    return spec.transform(raw)


def test_serving_route_builds_bit_identical_inputs_to_training(trained):
    data, _, _, _ = trained
    users = data.test.user_ids
    seq, static = serving_inputs(data, data.spec.to_json(), users)
    train_seq, train_static = data.inputs(data.test)
    np.testing.assert_array_equal(seq, train_seq)
    np.testing.assert_array_equal(static, train_static)


def test_tflite_float32_scores_held_out_customers_like_keras(trained):
    data, model, float_model, _ = trained
    seq, static = serving_inputs(data, data.spec.to_json(), data.test.user_ids)
    keras_scores = np.asarray(model([*data.inputs(data.test)], training=False)).ravel()
    tflite_scores = TFLiteScorer(float_model.content).predict(seq, static)
    assert np.max(np.abs(tflite_scores - keras_scores)) <= FLOAT32_TOLERANCE
    assert np.std(tflite_scores) > 0.05  # a real model, not a constant


def test_tflite_dynamic_range_stays_within_its_tolerance(trained):
    data, model, _, dr_model = trained
    x = data.inputs(data.test)
    keras_scores = np.asarray(model([*x], training=False)).ravel()
    assert (
        np.max(np.abs(TFLiteScorer(dr_model.content).predict(*x) - keras_scores)) <= DYNAMIC_RANGE_TOLERANCE
    )


def test_scoring_the_same_customer_twice_in_a_warm_interpreter_gives_the_same_number(trained):
    data, _, float_model, _ = trained
    scorer = TFLiteScorer(float_model.content)
    seq, static = data.inputs(data.test)
    first = scorer.predict(seq[:1], static[:1])
    scorer.predict(seq[1:300], static[1:300])  # other customers and another batch size in between
    assert scorer.predict(seq[:1], static[:1])[0] == first[0]
    # and batching does not change a customer's score
    np.testing.assert_allclose(scorer.predict(seq[:300], static[:300])[0], first[0], atol=1e-6)


def test_an_event_after_as_of_does_not_change_the_served_score(trained):
    data, _, float_model, _ = trained
    user = data.test.user_ids[0]
    spec_json = data.spec.to_json()
    before = serving_inputs(data, spec_json, [user])
    future = pd.DataFrame(
        {
            "user_id": [user],
            "timestamp": [pd.Timestamp("1997-12-01")],
            "event_type": ["order"],
            "amount": [99.0],
            "quantity": [3.0],
            "source_row": [0],
        }
    )
    after = serving_inputs(
        data, spec_json, [user], events=pd.concat([data.source.events, future], ignore_index=True)
    )
    scorer = TFLiteScorer(float_model.content)
    assert scorer.predict(*before)[0] == scorer.predict(*after)[0]


SCORE_IN_OTHER_RUNTIME = """
import json, sys
from importlib.metadata import version
import numpy as np
from churnguard.scorer import TFLiteScorer
runtime, distribution = sys.argv[1], sys.argv[2]
seq, static = np.load(sys.argv[3]), np.load(sys.argv[4])
out = {"numpy": np.__version__, "runtime": version(distribution)}
for name in sys.argv[5:]:
    scorer = TFLiteScorer.from_file(name, runtime=runtime)
    out[name] = scorer.predict(seq, static).tolist()
    scorer.predict(seq[:1], static[:1])  # resizing works in that runtime too
print(json.dumps(out))
"""


def _layer_pin(name: str) -> str:
    """The pin of ``name`` in the Lambda layer's requirements (what `sam build` packages)."""
    for line in (ROOT / "shared/requirements.txt").read_text().splitlines():
        if line.split("#")[0].strip().startswith(f"{name}=="):
            return line.split("#")[0].strip()
    raise AssertionError(f"{name} is not pinned in shared/requirements.txt")


@pytest.mark.parametrize(
    ("runtime", "distribution", "venv", "requirements"),
    [
        pytest.param(
            "tflite_runtime",
            "tflite-runtime",
            "venv-tflite-runtime-2.14",
            ("tflite-runtime==2.14.0", "numpy<2"),
            marks=pytest.mark.runtime214,
            id="tflite-runtime-2.14",
        ),
        # The layer's own runtime: the newest releases with wheels for Lambda python3.11's glibc 2.26
        pytest.param(
            "ai_edge_litert",
            "ai-edge-litert",
            "venv-lambda-layer-runtime",
            (_layer_pin("ai-edge-litert"), _layer_pin("numpy")),
            id="lambda-layer-ai-edge-litert",
        ),
    ],
)
def test_exported_files_load_and_score_identically_in_other_runtimes(
    trained, tmp_path, runtime, distribution, venv, requirements
):
    data, _, float_model, dr_model = trained
    seq, static = data.inputs(data.test)
    np.save(tmp_path / "seq.npy", seq)
    np.save(tmp_path / "static.npy", static)
    paths = []
    for model in (float_model, dr_model):
        path = tmp_path / model.name
        path.write_bytes(model.content)
        paths.append(str(path))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "shared")}
    result = subprocess.run(
        [
            str(cached_venv(venv, *requirements)),
            "-c",
            SCORE_IN_OTHER_RUNTIME,
            runtime,
            distribution,
            str(tmp_path / "seq.npy"),
            str(tmp_path / "static.npy"),
            *paths,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {r.split("==")[0]: r.split("==")[1] for r in requirements if "==" in r}
    assert out["runtime"] == expected[distribution]
    if "numpy" in expected:
        assert out["numpy"] == expected["numpy"]
    # float32 kernels agree to float rounding; the hybrid (dynamic-range) kernels quantize activations
    # at run time and may round one input differently (seen: 1 of 600 customers off by 2.6e-5).
    for model, path, atol in ((float_model, paths[0], 1e-6), (dr_model, paths[1], 1e-4)):
        litert = TFLiteScorer(model.content).predict(seq, static)
        np.testing.assert_allclose(np.asarray(out[path], dtype=np.float32), litert, atol=atol, rtol=0)


def test_snapshot_augmentation_uses_only_training_customers_at_earlier_cutoffs(trained):
    from training.data import snapshot_augmentation

    data = trained[0]
    snapshots = snapshot_augmentation(data, snapshots=3, step_weeks=4)
    assert len(snapshots) == 3
    train_users = set(data.train.user_ids)
    tenure = list(data.train.raw.static_names).index("tenure_days")
    row_now = {u: i for i, u in enumerate(data.train.user_ids)}
    for k, snap in enumerate(snapshots, 1):
        assert set(snap.user_ids) <= train_users
        assert 0 < snap.labels.mean() < 1
        # Same customers, cutoff 4k weeks earlier: tenure is exactly 28k days shorter.
        rows_then = np.arange(len(snap.user_ids))
        rows_now = np.array([row_now[u] for u in snap.user_ids])
        np.testing.assert_allclose(
            data.train.raw.static[rows_now, tenure] - snap.raw.static[rows_then, tenure], 28 * k
        )


def test_a_dynamic_range_model_over_tolerance_is_refused_without_blocking_float32(trained, monkeypatch):
    from training import export

    data, model, _, _ = trained
    monkeypatch.setattr(export, "DYNAMIC_RANGE_TOLERANCE", 1e-9)
    exports = export.export_all(model, *data.inputs(data.test))
    assert exports.dynamic_range is None
    assert "model_dynamic_range.tflite" in exports.dynamic_range_refusal
    assert exports.float32.max_abs_diff <= FLOAT32_TOLERANCE


def test_a_float32_parity_failure_is_fatal(trained, monkeypatch):
    from training import export

    data, model, _, _ = trained
    monkeypatch.setattr(export, "FLOAT32_TOLERANCE", 0.0)
    with pytest.raises(export.ExportError, match=r"model\.tflite: max"):
        export.export_all(model, *data.inputs(data.test))  # any float rounding exceeds a zero tolerance
