"""Event types have one home, ``churnguard.event_types``: every other view of them is derived from it."""

import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnguard import api, batch, events, features, reasons
from churnguard.event_types import (
    EVENT_TYPE_ORDER,
    EVENT_TYPE_TABLE,
    EVENT_TYPES,
    EventTypeDef,
    ReasonGroup,
    _check,
)
from churnguard.features import FeatureConfig, FeatureSpec, FeatureSpecError, _group_of, static_feature_names
from training.data import EventSource, Protocol, prepare

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_SPEC = ROOT / "tests/fixtures/model/feature_spec.json"
OTHER_CONFIG = FeatureConfig(weeks=60, recent_windows=(2, 8, 30), trend_weeks=10, decay_half_lives=(2, 5, 9))


def _small_log(types: tuple[str, ...]) -> pd.DataFrame:
    """120 customers with one event of every type before 1997-10-01; every other one orders after it."""
    rows = []
    for i in range(120):
        user = f"u{i}"
        rows += [[user, "1997-03-01", t, 10.0 + i if t == EVENT_TYPE_ORDER else 0.0, 1.0] for t in types]
        if i % 2:
            rows.append([user, "1997-11-01", EVENT_TYPE_ORDER, 5.0, 1.0])
    return pd.DataFrame(rows, columns=["user_id", "timestamp", "event_type", "amount", "quantity"])


def _source(raw: pd.DataFrame) -> EventSource:
    validated = events.validate_events(raw)
    return EventSource("test", validated.events, validated.profile_columns, "0" * 64, validated.rows_in, 0)


# ---- the table itself --------------------------------------------------------------------------


def test_the_table_is_the_canonical_schema():
    assert EVENT_TYPES == ("order", "view", "cart", "return")
    assert [t.code for t in EVENT_TYPE_TABLE] == [0, 1, 2, 3]
    assert {t.name: t.reason.name if t.reason else None for t in EVENT_TYPE_TABLE} == {
        "order": None,
        "view": "browsing",
        "cart": "browsing",
        "return": "returns",
    }


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ((EventTypeDef("order", 0, None), EventTypeDef("view", 2, ReasonGroup("b", "b"))), "codes"),
        ((EventTypeDef("order", 0, None), EventTypeDef("order", 1, ReasonGroup("b", "b"))), "repeat"),
        ((EventTypeDef("order", 0, None), EventTypeDef("view", 1, None)), "needs a reason group"),
        ((EventTypeDef("order", 0, None), EventTypeDef("View", 1, ReasonGroup("b", "b"))), "lower case"),
        ((EventTypeDef("view", 0, ReasonGroup("b", "b")),), "needs a reason group|must hold"),
        (
            (
                EventTypeDef("order", 0, None),
                EventTypeDef("view", 1, ReasonGroup("b", "one text")),
                EventTypeDef("cart", 2, ReasonGroup("b", "another text")),
            ),
            "two texts",
        ),
    ],
)
def test_a_malformed_table_is_refused_at_import(table, message):
    with pytest.raises(ValueError, match=message):
        _check(table)


# ---- every module's view equals what the table derives ------------------------------------------


def test_features_and_events_accept_exactly_the_table():
    assert features.EVENT_TYPES == EVENT_TYPES
    assert events.EVENT_TYPES == EVENT_TYPES
    assert features.EVENT_TYPE_ORDER == EVENT_TYPE_ORDER


def test_api_enum_is_the_table_in_order():
    literal = typing.get_args(api.EventType)[0]
    assert typing.get_origin(literal) is typing.Literal
    assert typing.get_args(literal) == EVENT_TYPES
    event = api.EventIn.model_validate({"timestamp": "1997-01-01", "event_type": " Cart "})
    assert event.event_type == "cart"


def test_committed_openapi_enum_is_the_table_in_order():
    document = json.loads((ROOT / "functions/score_api/openapi.json").read_text())
    enums = [
        schema["properties"]["event_type"]["enum"]
        for schema in document["components"]["schemas"].values()
        if "event_type" in schema.get("properties", {})
    ]
    assert len(enums) == 2  # EventIn (POST /v1/scores) and StreamEventIn (POST /v1/events)
    assert all(enum == list(EVENT_TYPES) for enum in enums)


def test_batch_codes_are_the_table_codes():
    assert {t.name: t.code for t in EVENT_TYPE_TABLE} == batch.TYPE_CODES
    assert [batch.TYPE_NAMES[t.code] for t in EVENT_TYPE_TABLE] == list(EVENT_TYPES)
    assert max(batch.TYPE_CODES.values()) <= np.iinfo(np.int8).max  # codes travel as int8


@pytest.mark.parametrize("config", [FeatureConfig(), OTHER_CONFIG], ids=["default", "other"])
def test_each_type_feature_is_in_its_table_group(config):
    names = static_feature_names(EVENT_TYPES, config)
    core = static_feature_names((EVENT_TYPE_ORDER,), config)
    for t in EVENT_TYPE_TABLE:
        if t.reason is None:
            continue
        own = [n for n in names if n not in core and n.startswith(f"{t.name}_")]
        assert own == [f"{t.name}_{s}" for s in features.TYPE_FEATURE_SUFFIXES]
        assert {_group_of(n) for n in own} == {t.reason.name}
    # the core (order) features never land in an event type's group
    type_groups = {t.reason.name for t in EVENT_TYPE_TABLE if t.reason}
    assert not {_group_of(n) for n in core} & type_groups


def test_fixture_model_groups_are_unchanged():
    data = json.loads(FIXTURE_SPEC.read_text())
    spec = FeatureSpec.from_dict(data)
    assert spec.event_types == EVENT_TYPES
    assert list(spec.static_groups) == data["model_inputs"]["static_groups"]


def test_reason_texts_follow_the_table():
    for t in EVENT_TYPE_TABLE:
        if t.reason is not None:
            assert reasons.REASON_TEXT[t.reason.name] == t.reason.text
    spec = FeatureSpec.from_json(FIXTURE_SPEC.read_text())
    for group in {*spec.static_groups, reasons.SEQUENCE_GROUP}:  # every group a model can name has a text
        assert group in reasons.REASON_TEXT
    assert list(reasons.REASON_TEXT) == [
        "recency",
        "frequency",
        "spend",
        "recent_trend",
        "tenure",
        "browsing",
        "returns",
        "profile",
        "weekly_activity",
    ]


def test_training_uses_every_table_type_present_in_table_order():
    prepared = prepare(_source(_small_log(EVENT_TYPES[::-1])), Protocol(as_of="1997-10-01"))
    assert prepared.event_types == EVENT_TYPES
    only_orders = prepare(_source(_small_log((EVENT_TYPE_ORDER,))), Protocol(as_of="1997-10-01"))
    assert only_orders.event_types == (EVENT_TYPE_ORDER,)


# ---- nothing unknown falls into "frequency" -----------------------------------------------------


@pytest.mark.parametrize(
    "name", ["wishlist_count", "wishlist_recency_days", "view_something", "orders_total", "new_feature"]
)
def test_a_static_feature_without_a_rule_has_no_group(name):
    with pytest.raises(FeatureSpecError, match="no reason group"):
        _group_of(name)


def test_a_spec_with_a_type_outside_the_table_is_refused():
    data = json.loads(FIXTURE_SPEC.read_text())
    data["event_types"] = [*data["event_types"], "wishlist"]
    with pytest.raises(FeatureSpecError, match="wishlist"):
        FeatureSpec.from_dict(data)


# ---- adding a type is one row --------------------------------------------------------------------

_PROBE = r"""
import json, typing
import pandas as pd
import churnguard
from churnguard import api, batch, events, features, reasons
from churnguard.features import FeatureConfig, static_feature_names
from training.data import EventSource, Protocol, prepare

rows = []
for i in range(120):
    u = f"u{i}"
    rows += [[u, "1997-03-01", "order", 10.0 + i], [u, "1997-04-01", " WishList ", 0.0]]
    if i % 2:
        rows.append([u, "1997-11-01", "order", 5.0])
raw = pd.DataFrame(rows, columns=["user_id", "timestamp", "event_type", "amount"])
validated = events.validate_events(raw)
prepared = prepare(
    EventSource("probe", validated.events, (), "0" * 64, validated.rows_in, 0), Protocol(as_of="1997-10-01")
)
names = static_feature_names(features.EVENT_TYPES, FeatureConfig())
event = api.EventIn.model_validate({"timestamp": "1997-01-01", "event_type": "Wishlist"})
print(json.dumps({
    "package": churnguard.__file__,
    "features": list(features.EVENT_TYPES),
    "api": list(typing.get_args(typing.get_args(api.EventType)[0])),
    "api_accepts": event.event_type,
    "batch": batch.TYPE_CODES,
    "batch_names": list(batch.TYPE_NAMES),
    "rejected": len(validated.rejected),
    "training": list(prepared.event_types),
    "groups": {n: features._group_of(n) for n in names if n.startswith("wishlist_")},
    "spec_groups": sorted(set(prepared.spec.static_groups)),
    "text": reasons.REASON_TEXT.get("wishlist"),
}))
"""


def test_adding_a_type_is_one_row_in_the_table(tmp_path):
    """Copy the package, add one row to the table, and every view follows (api, batch, events,
    features, reasons, training) with no other edit."""
    package = tmp_path / "churnguard"
    shutil.copytree(ROOT / "shared/churnguard", package, ignore=shutil.ignore_patterns("__pycache__"))
    source = (package / "event_types.py").read_text()
    start = source.index("EVENT_TYPE_TABLE: tuple[EventTypeDef, ...] = (")
    end = source.index("\n)\n", start)
    new_row = 'EventTypeDef("wishlist", {}, ReasonGroup("wishlist", "items saved, none bought")),'
    row = "\n    " + new_row.format(len(EVENT_TYPES))
    (package / "event_types.py").write_text(source[:end] + row + source[end:])

    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env={**_clean_env(), "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    expected = [*EVENT_TYPES, "wishlist"]
    assert seen["package"] == str(package / "__init__.py")
    assert seen["features"] == seen["api"] == expected
    assert seen["api_accepts"] == "wishlist"
    assert seen["batch"] == {t: code for code, t in enumerate(expected)}
    assert seen["batch_names"] == expected
    assert seen["rejected"] == 0
    assert seen["training"] == ["order", "wishlist"]
    assert seen["groups"] == {f"wishlist_{s}": "wishlist" for s in features.TYPE_FEATURE_SUFFIXES}
    assert "wishlist" in seen["spec_groups"]
    assert seen["text"] == "items saved, none bought"


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
