"""churnguard.champion without AWS or a model: the gate's metrics, the artifact reader and decide()."""

import io
import itertools
import json
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn import metrics as sk

from churnguard.adapters import S3ObjectStore
from churnguard.champion import GatePolicy, Holdout, decide, files_from_tarball, log_loss, roc_auc
from churnguard.scorer import ModelLoadError
from tests.helpers import FIXTURE_MODEL, tarball

# --- roc_auc -------------------------------------------------------------------------------------------


def pairwise_auc(labels, scores):
    """P(a positive outscores a negative) + half P(tie), over every (positive, negative) pair."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize("seed", range(8))
def test_roc_auc_equals_scikit_learn_and_the_pairwise_definition_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]  # both classes present
    # informative but noisy scores, rounded so that many customers tie (as float32 probabilities do)
    scores = np.round(0.3 * labels + rng.random(n), 1)
    assert len(np.unique(scores)) < n  # the case under test: ties exist
    auc = roc_auc(labels, scores)
    assert auc == pytest.approx(sk.roc_auc_score(labels, scores), abs=1e-12)
    assert auc == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_roc_auc_gives_a_tie_between_classes_half_credit():
    # one positive and one negative share 0.5: 3 pairs won, one tied, of 4 pairs -> 3.5 / 4
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.5, 0.9])) == pytest.approx(0.875)
    assert roc_auc(np.array([0, 1, 0, 1]), np.full(4, 0.3)) == pytest.approx(0.5)


def test_roc_auc_is_one_for_a_perfect_ranking_and_zero_for_a_reversed_one():
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.2, 0.7, 0.1, 0.3])
    assert roc_auc(labels, scores) == 1.0
    assert roc_auc(labels, -scores) == 0.0


def test_roc_auc_does_not_depend_on_the_order_of_customers():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200), 1).astype(np.float32)  # the scorer's dtype, with ties
    permutation = rng.permutation(200)
    assert roc_auc(labels[permutation], scores[permutation]) == pytest.approx(roc_auc(labels, scores))


@pytest.mark.parametrize("label", [0, 1])
def test_roc_auc_refuses_a_holdout_with_only_one_class(label):
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.full(10, label), np.linspace(0, 1, 10))


# --- log_loss ------------------------------------------------------------------------------------------


def test_log_loss_equals_scikit_learn_on_random_probabilities():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 500)
    probabilities = rng.uniform(0.01, 0.99, 500)
    assert log_loss(labels, probabilities) == pytest.approx(sk.log_loss(labels, probabilities), rel=1e-12)


def test_log_loss_of_a_coin_flip_is_ln_2():
    assert log_loss(np.array([0, 1, 1, 0]), np.full(4, 0.5)) == pytest.approx(np.log(2))


def test_log_loss_clips_certain_wrong_predictions_to_a_finite_penalty():
    # p = 0 for a churner and p = 1 for a stayer would be infinite; clipped at 1e-7 they cost -ln(1e-7)
    wrong = log_loss(np.array([1, 0]), np.array([0.0, 1.0]))
    assert np.isfinite(wrong)
    assert wrong == pytest.approx(-np.log(1e-7), rel=1e-6)
    # float32 input (what the scorer returns) is clipped after widening, so 1.0 is not log(0) either
    assert log_loss(np.array([0]), np.array([1.0], dtype=np.float32)) == pytest.approx(
        -np.log(1e-7), rel=1e-6
    )


def test_log_loss_of_certain_right_predictions_is_the_clip_floor_not_zero_or_nan():
    right = log_loss(np.array([1, 0]), np.array([1.0, 0.0]))
    assert right == pytest.approx(-np.log(1 - 1e-7), rel=1e-6)
    assert 0 < right < 1e-6


# --- files_from_tarball --------------------------------------------------------------------------------


def make_tar(members):
    """``members``: (name, bytes) for a regular file, (name, None) for a directory, or
    (name, ("symlink", target))."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif isinstance(content, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, content[1]
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_files_from_tarball_reads_a_model_directory_archive_byte_for_byte():
    files = files_from_tarball(tarball(FIXTURE_MODEL))
    assert files == {path.name: path.read_bytes() for path in FIXTURE_MODEL.iterdir()}


def test_files_from_tarball_flattens_dot_slash_names_and_ignores_nested_directories():
    # `tar -C /opt/ml/model -czf model.tar.gz .` writes "./name" members, and train.py's report/ sits beside
    content = make_tar(
        [
            (".", None),
            ("./metadata.json", b'{"a": 1}'),
            ("./model.tflite", b"tflite"),
            ("./report", None),
            ("./report/metrics.json", b"{}"),
            ("report/deep/curve.csv", b"x"),
        ]
    )
    assert files_from_tarball(content) == {"metadata.json": b'{"a": 1}', "model.tflite": b"tflite"}


def test_files_from_tarball_returns_no_name_that_could_leave_the_directory_it_is_written_to():
    # the promote handler writes each returned name under a temporary directory
    content = make_tar(
        [
            ("/etc/model.tflite", b"absolute"),
            ("../../outside/metadata.json", b"traversal"),
            ("report/../../feature_spec.json", b"nested traversal"),
            ("model.tflite", ("symlink", "/etc/passwd")),
            ("feature_spec.json", b"spec"),
        ]
    )
    files = files_from_tarball(content)
    assert files == {"feature_spec.json": b"spec"}  # the symlink is not followed, nested names are dropped
    assert all("/" not in name and ".." not in name for name in files)


@pytest.mark.parametrize(
    "content",
    [b"not a tarball", b"", tarball(FIXTURE_MODEL)[:200]],
    ids=["garbage", "empty", "truncated"],
)
def test_files_from_tarball_turns_an_unreadable_artifact_into_a_model_load_error(content):
    with pytest.raises(ModelLoadError, match=r"not a readable tar\.gz"):
        files_from_tarball(content)


# --- Holdout.from_s3 -----------------------------------------------------------------------------------


class FakeS3:
    """get_object over an in-memory bucket; a missing key raises like boto3's NoSuchKey (a KeyError here)."""

    def __init__(self, objects):
        self.objects, self.read = objects, []

    def get_object(self, Bucket, Key):
        self.read.append((Bucket, Key))
        return {"Body": io.BytesIO(self.objects[Key])}


HOLDOUT_OBJECTS = {
    "holdout/meta.json": json.dumps({"as_of": "2024-09-30"}).encode(),
    "holdout/labels.csv": b"user_id,churned\n007,1\n42,0\n",
    "holdout/events.csv": b"user_id,timestamp,event_type,amount,quantity\n"
    b"007,2024-08-01,purchase,12.5,1\n42,2024-09-01,purchase,3,2\n",
}


def test_holdout_from_s3_reads_the_three_objects_under_the_prefix_and_keeps_user_ids_as_text():
    s3 = FakeS3(HOLDOUT_OBJECTS)
    holdout = Holdout.from_s3(S3ObjectStore(s3), "bucket")
    assert {key for _, key in s3.read} == set(HOLDOUT_OBJECTS)
    assert {bucket for bucket, _ in s3.read} == {"bucket"}
    assert list(holdout.user_ids) == ["007", "42"]  # not 7: ids are joined to events as strings
    assert holdout.labels.tolist() == [1, 0]
    assert holdout.as_of == "2024-09-30"


@pytest.mark.parametrize("missing", sorted(HOLDOUT_OBJECTS))
def test_a_missing_holdout_object_fails_loudly_instead_of_building_a_holdout(missing):
    objects = {k: v for k, v in HOLDOUT_OBJECTS.items() if k != missing}
    with pytest.raises(KeyError, match=missing):
        Holdout.from_s3(S3ObjectStore(FakeS3(objects)), "bucket")


# --- decide --------------------------------------------------------------------------------------------

# dyadic numbers: champion - drop and champion + increase are exact, so the boundary is the boundary
POLICY = GatePolicy(max_auc_drop=0.0625, max_log_loss_increase=0.125, min_holdout_customers=4)
CHAMPION_METRICS = {"roc_auc": 0.75, "log_loss": 0.5, "customers": 4}


class FakeHoldout(Holdout):
    """A holdout whose evaluation is given per model version, recording which models were scored."""

    def __init__(self, customers, metrics_by_version):
        super().__init__(
            np.array([f"u{i}" for i in range(customers)], dtype=object), np.zeros(customers), None, ""
        )
        self.metrics_by_version, self.evaluated = metrics_by_version, []

    def evaluate(self, bundle):
        self.evaluated.append(bundle.version)
        return dict(self.metrics_by_version[bundle.version])


def model(version):
    return SimpleNamespace(version=version)


def gate(challenger_metrics, customers=4, champion="champion", policy=POLICY):
    holdout = FakeHoldout(customers, {"challenger": challenger_metrics, "champion": CHAMPION_METRICS})
    decision = decide(model("challenger"), model(champion) if champion else None, holdout, policy)
    return decision, holdout


def test_decide_promotes_the_first_valid_model_when_there_is_no_champion():
    decision, holdout = gate({"roc_auc": 0.51, "log_loss": 0.69, "customers": 4}, champion=None)
    assert decision.accepted is True
    assert (decision.challenger_version, decision.champion_version) == ("challenger", None)
    assert decision.challenger["roc_auc"] == 0.51 and decision.champion == {}
    assert holdout.evaluated == ["challenger"]
    assert decision.reasons == ["no champion: the first valid model is promoted"]


def test_decide_refuses_on_a_holdout_below_the_minimum_without_scoring_either_model():
    decision, holdout = gate({"roc_auc": 0.99, "log_loss": 0.01}, customers=3)
    assert decision.accepted is False
    assert holdout.evaluated == []
    assert (decision.challenger, decision.champion) == ({}, {})
    assert decision.champion_version == "champion"  # the record still names both models
    assert decision.reasons == ["holdout has 3 customers, fewer than 4"]


def test_decide_refuses_even_a_first_model_on_a_too_small_holdout():
    decision, holdout = gate({"roc_auc": 0.99, "log_loss": 0.01}, customers=3, champion=None)
    assert decision.accepted is False and holdout.evaluated == []


def test_decide_scores_a_holdout_of_exactly_the_minimum_size():
    decision, holdout = gate({"roc_auc": 0.75, "log_loss": 0.5}, customers=POLICY.min_holdout_customers)
    assert decision.accepted is True
    assert holdout.evaluated == ["challenger", "champion"]


def test_decide_accepts_a_challenger_exactly_at_both_tolerances():
    floor = CHAMPION_METRICS["roc_auc"] - POLICY.max_auc_drop
    ceiling = CHAMPION_METRICS["log_loss"] + POLICY.max_log_loss_increase
    decision, _ = gate({"roc_auc": floor, "log_loss": ceiling})
    assert decision.accepted is True, decision.reasons
    assert decision.champion == CHAMPION_METRICS
    assert decision.reasons == ["challenger is not worse than the champion on the holdout"]


def test_decide_rejects_a_challenger_just_below_the_auc_floor():
    floor = CHAMPION_METRICS["roc_auc"] - POLICY.max_auc_drop
    decision, _ = gate({"roc_auc": float(np.nextafter(floor, 0)), "log_loss": 0.5})
    assert decision.accepted is False
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith("AUC ")


def test_decide_rejects_a_challenger_just_above_the_log_loss_ceiling():
    ceiling = CHAMPION_METRICS["log_loss"] + POLICY.max_log_loss_increase
    decision, _ = gate({"roc_auc": 0.75, "log_loss": float(np.nextafter(ceiling, 1))})
    assert decision.accepted is False
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith("log-loss ")


def test_decide_gives_every_failed_criterion_as_a_reason():
    decision, _ = gate({"roc_auc": 0.5, "log_loss": 0.9})
    assert decision.accepted is False
    assert [r.split()[0] for r in decision.reasons] == ["AUC", "log-loss"]


def test_decide_with_the_default_policy_accepts_the_documented_drop_and_rejects_more():
    policy = GatePolicy()  # AUC - 0.005, log-loss + 0.002 (README, template defaults)
    holdout_size = policy.min_holdout_customers
    accepted, _ = gate({"roc_auc": 0.746, "log_loss": 0.501}, customers=holdout_size, policy=policy)
    rejected, _ = gate({"roc_auc": 0.744, "log_loss": 0.5}, customers=holdout_size, policy=policy)
    assert accepted.accepted is True and rejected.accepted is False


def test_files_from_tarball_takes_only_the_archive_roots_own_files_not_lookalikes():
    content = make_tar(
        [
            ("../model.tflite", b"outside the archive root"),
            (".metadata.json", b"a hidden file"),
            ("./model.tflite", b"tflite"),
        ]
    )
    assert files_from_tarball(content) == {"model.tflite": b"tflite", ".metadata.json": b"a hidden file"}
