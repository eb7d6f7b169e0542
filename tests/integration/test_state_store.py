"""The DynamoDB adapter of ``CustomerStateStore`` (``churnguard.adapters.DynamoDbCustomerStateStore``)
against moto's server over HTTP: round trip, conditional writes, erasure, scan pages, TTL — and the
real-time domain on top of it, end to end."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from botocore.exceptions import ClientError

from churnguard.adapters import DynamoDbCustomerStateStore
from churnguard.aws import RefusedAwsError, classify_aws_error
from churnguard.bundle import ModelBundle
from churnguard.customer_state import CustomerState, StateEvent, apply_events
from churnguard.ports import CustomerRecord, StateConflictError
from churnguard.promotions import PromotionPolicy
from churnguard.realtime import customer_view, erase, ingest, rescore_inactive
from tests.helpers import FIXTURE_MODEL
from tests.unit.fakes import RecordingPublisher

TABLE = "churnguard-customer-state"
T = 1_704_067_200.0  # 2024-01-01T00:00:00Z
USER = "çliente 1 ü"  # any string is a key


@pytest.fixture
def ddb(aws):
    client = aws["dynamodb"]
    client.create_table(
        TableName=TABLE,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=[{"AttributeName": "user_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "user_id", "AttributeType": "S"}],
    )
    client.update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl"}
    )
    return client


def record(last_event_s: float = T, **changes) -> CustomerRecord:
    state = apply_events(None, [StateEvent(last_event_s, "order", 12.5, event_id="e1")]).state
    return CustomerRecord(state=state.to_bytes(), last_event_s=last_event_s, **changes)


def test_a_record_round_trips_with_every_field(ddb):
    store = DynamoDbCustomerStateStore(ddb, TABLE)
    assert store.get(USER) == (None, 0)
    full = record(
        risk=0.123456789,
        risk_tier="medium",
        model_version="v-1",
        scored_at_s=T + 0.25,
        armed=False,
        last_warning_s=T - 86_400.5,
        outbox=('{"user_id":"x","idempotency_key":"k"}', '{"b":2}'),
    )
    first = store.put(USER, full, 0)
    assert first != 0 and store.get(USER) == (full, first)
    assert CustomerState.from_bytes(store.get(USER)[0].state).events_applied == 1
    bare = record()  # defaults: no score yet, armed, empty outbox
    second = store.put(USER, bare, first)
    assert second not in (0, first) and store.get(USER) == (bare, second)
    item = ddb.get_item(TableName=TABLE, Key={"user_id": {"S": USER}})["Item"]
    assert "outbox" not in item and "risk" not in item  # nothing left of the previous version


def test_a_write_conditional_on_a_stale_version_is_a_conflict_and_changes_nothing(ddb):
    store = DynamoDbCustomerStateStore(ddb, TABLE)
    first = store.put(USER, record(risk=0.1), 0)
    with pytest.raises(StateConflictError) as created_twice:
        store.put(USER, record(risk=0.2), 0)
    assert USER not in str(created_twice.value)
    second = store.put(USER, record(risk=0.3), first)
    with pytest.raises(StateConflictError):
        store.put(USER, record(risk=0.4), first)
    assert store.get(USER) == (record(risk=0.3), second)


def test_a_writer_that_read_before_an_erasure_cannot_overwrite_the_customer_created_after_it(ddb):
    """ABA: read (version v), erase, re-create; a counter would hand the new record version v again."""
    store = DynamoDbCustomerStateStore(ddb, TABLE)
    stale = store.put(USER, record(risk=0.9), 0)  # what the slow writer read
    store.delete(USER)
    recreated = store.put(USER, record(risk=0.1), 0)
    with pytest.raises(StateConflictError):
        store.put(USER, record(risk=0.95), stale)
    assert store.get(USER) == (record(risk=0.1), recreated)


def test_delete_is_idempotent_and_leaves_no_item_and_no_way_back(ddb):
    store = DynamoDbCustomerStateStore(ddb, TABLE)
    erased = store.put(USER, record(outbox=('{"m":1}',)), 0)
    store.put("other", record(), 0)
    store.delete(USER)
    store.delete(USER)
    store.delete("never-there")
    assert "Item" not in ddb.get_item(TableName=TABLE, Key={"user_id": {"S": USER}}, ConsistentRead=True)
    assert store.get(USER) == (None, 0)
    with pytest.raises(StateConflictError):  # a writer that read it before the erasure cannot restore it
        store.put(USER, record(), erased)
    assert [i["user_id"]["S"] for i in ddb.scan(TableName=TABLE)["Items"]] == ["other"]


def test_scan_pages_and_segments_return_every_customer_exactly_once(ddb):
    store = DynamoDbCustomerStateStore(ddb, TABLE)
    users = [f"u{i:02d}" for i in range(23)]
    versions = {user: store.put(user, record(), 0) for user in users}
    seen, cursor, pages = [], None, 0
    while True:
        page = store.scan_page(cursor, 10)
        seen += [c.user_id for c in page.customers]
        assert all(c.version == versions[c.user_id] and c.record == record() for c in page.customers)
        cursor, pages = page.cursor, pages + 1
        if cursor is None:
            break
    assert sorted(seen) == users and pages >= 3
    by_segment = [
        [c.user_id for c in store.scan_page(None, 100, segment=s, segments=3).customers] for s in range(3)
    ]
    assert sorted(u for segment in by_segment for u in segment) == users


def test_the_ttl_attribute_is_the_last_event_plus_the_retention_period(ddb):
    DynamoDbCustomerStateStore(ddb, TABLE).put("a", record(T + 0.5), 0)
    DynamoDbCustomerStateStore(ddb, TABLE, retention_days=30).put("b", record(T), 0)
    items = {i["user_id"]["S"]: i for i in ddb.scan(TableName=TABLE)["Items"]}
    assert int(items["a"]["ttl"]["N"]) == math.ceil(T + 0.5 + 730 * 86_400)
    assert int(items["b"]["ttl"]["N"]) == int(T) + 30 * 86_400
    ttl = ddb.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "ttl" and ttl["TimeToLiveStatus"] == "ENABLED"


def test_aws_errors_pass_through_unchanged_and_classify_as_refused(ddb):
    store = DynamoDbCustomerStateStore(ddb, "no-such-table")
    with pytest.raises(ClientError) as missing:
        store.put(USER, record(), 0)
    assert not isinstance(missing.value, StateConflictError)
    classified = classify_aws_error(missing.value)
    assert isinstance(classified, RefusedAwsError) and USER not in str(classified)


def test_events_sweep_view_and_erasure_end_to_end_on_dynamodb(ddb):
    store = DynamoDbCustomerStateStore(ddb, TABLE)
    bundle = ModelBundle.from_directory(FIXTURE_MODEL)
    publisher = RecordingPublisher()
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    for week in range(6):
        event = StateEvent(
            (base + dt.timedelta(weeks=week)).timestamp(), "order", 40.0, 2, event_id=f"o{week}"
        )
        result = ingest(
            [(USER, event)],
            store=store,
            bundle=bundle,
            policy=PromotionPolicy(),
            publisher=publisher,
            now=base + dt.timedelta(weeks=week, hours=1),
        )
        assert result.customers[0].error is None and result.customers[0].applied == 1
    assert [m["trigger"] for m in publisher.messages] == ["event"]  # the newcomer
    lapsed = base + dt.timedelta(weeks=5, days=45)
    sweep = rescore_inactive(store, bundle, policy=PromotionPolicy(), publisher=publisher, now=lapsed)
    assert (sweep.scanned, sweep.warnings, sweep.queued) == (1, 1, 1)
    assert publisher.messages[-1]["trigger"] == "inactivity"
    again = rescore_inactive(
        store, bundle, policy=PromotionPolicy(), publisher=publisher, now=lapsed + dt.timedelta(days=1)
    )
    assert again.warnings == 0 and len(publisher.messages) == 2
    view = customer_view(store, bundle, USER, lapsed)
    assert view.risk_tier == "high" and view.last_warning_s == lapsed.timestamp()
    erase(store, USER)
    erase(store, USER)
    assert ddb.scan(TableName=TABLE, ConsistentRead=True)["Count"] == 0
    assert customer_view(store, bundle, USER, lapsed) is None
