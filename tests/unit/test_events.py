"""The canonical event schema: every awkward-row rule, and the rows-in = valid + rejected invariant."""

import pandas as pd
import pytest

from churnguard.events import EventLogError, read_event_file, validate_events


def frame(rows, columns=("user_id", "timestamp", "event_type", "amount", "quantity")):
    return pd.DataFrame(rows, columns=list(columns))


def reasons(result):
    return dict(zip(result.rejected["source_row"], result.rejected["reason"], strict=True))


def test_missing_required_column_names_the_column():
    with pytest.raises(EventLogError, match=r"missing required column\(s\) \['event_type'\]"):
        validate_events(pd.DataFrame({"user_id": ["a"], "timestamp": ["2024-01-01"]}))


def test_timestamps_with_offsets_are_converted_to_utc_and_naive_ones_taken_as_utc():
    result = validate_events(
        frame(
            [
                ["a", "2024-03-01T10:00:00+02:00", "order", "5", "1"],
                ["a", "2024-03-01T08:00:00Z", "order", "5", "1"],
                ["a", "2024-03-01 08:00:00", "order", "5", "1"],
                ["a", "2024-03-01", "view", None, None],
            ]
        )
    )
    assert result.rejected.empty
    ts = result.events["timestamp"].tolist()
    assert ts[0] == ts[1] == ts[2] == pd.Timestamp("2024-03-01 08:00:00")
    assert ts[3] == pd.Timestamp("2024-03-01")


def test_unparseable_and_missing_timestamps_are_rejected_with_row_numbers():
    result = validate_events(
        frame(
            [
                ["a", "2024-03-01", "order", "5", "1"],
                ["a", "yesterday", "order", "5", "1"],
                ["a", None, "order", "5", "1"],
            ]
        ),
        first_row_number=10,
    )
    assert reasons(result) == {11: "timestamp is not ISO-8601", 12: "timestamp is missing"}
    assert result.events["source_row"].tolist() == [10]


def test_unknown_event_type_is_rejected_but_case_and_blanks_are_ignored():
    result = validate_events(
        frame(
            [
                ["a", "2024-03-01", " ORDER ", "5", "1"],
                ["a", "2024-03-01", "purchase", "5", "1"],
            ]
        )
    )
    assert result.events["event_type"].tolist() == ["order"]
    assert "unknown event_type 'purchase'" in reasons(result)[2]


def test_amount_rules_missing_is_zero_negative_and_text_rejected_zero_kept():
    result = validate_events(
        frame(
            [
                ["a", "2024-03-01", "order", None, "1"],
                ["a", "2024-03-01", "order", "0", "1"],
                ["a", "2024-03-01", "order", "-3.5", "1"],
                ["a", "2024-03-01", "order", "ten", "1"],
                ["a", "2024-03-01", "order", "inf", "1"],
            ]
        )
    )
    assert result.events["amount"].tolist() == [0.0, 0.0]
    assert reasons(result) == {
        3: "amount is negative",
        4: "amount is not a number",
        5: "amount is not finite",
    }


def test_amounts_and_quantities_above_the_schema_limits_are_rejected_not_overflowed():
    result = validate_events(
        frame(
            [
                ["a", "1997-03-01", "order", "1e39", "1"],  # float32 inf -> a NaN score before
                ["a", "1997-03-01", "order", "1000000000", "1000000"],  # exactly the limits: kept
                ["a", "1997-03-01", "order", "5", "1000001"],
            ]
        )
    )
    assert result.events["amount"].tolist() == [1e9]
    assert reasons(result) == {1: "amount is above 1e+09", 3: "quantity is above 1e+06"}


def test_user_ids_longer_than_the_api_allows_are_rejected_in_files_too():
    result = validate_events(
        frame(
            [
                ["x" * 256, "1997-03-01", "order", "5", "1"],  # exactly the limit: kept
                [" " + "y" * 256 + " ", "1997-03-01", "order", "5", "1"],  # padding is stripped first
                ["z" * 1_000_000, "1997-03-01", "order", "5", "1"],  # a 1 MB id multiplied memory per row
            ]
        )
    )
    assert result.events["user_id"].str.len().tolist() == [256, 256]
    assert reasons(result) == {3: "user_id is longer than 256 characters"}


def test_quantity_defaults_to_one_and_negative_is_rejected():
    result = validate_events(
        frame([["a", "2024-03-01", "order", "5", None], ["a", "2024-03-01", "order", "5", "-1"]])
    )
    assert result.events["quantity"].tolist() == [1.0]
    assert reasons(result) == {2: "quantity is negative"}


def test_several_problems_in_one_row_are_all_reported():
    result = validate_events(frame([[None, "nope", "click", "-1", "1"]]))
    reason = reasons(result)[1]
    for part in (
        "user_id is missing",
        "timestamp is not ISO-8601",
        "unknown event_type 'click'",
        "amount is negative",
    ):
        assert part in reason


def test_identical_rows_without_event_id_are_separate_events():
    rows = [["a", "2024-03-01", "order", "5", "1"]] * 2
    assert len(validate_events(frame(rows)).events) == 2


def test_repeated_event_id_is_one_event_and_the_repeat_is_rejected():
    result = validate_events(
        frame(
            [
                ["a", "2024-03-01", "order", "5", "1", "e1"],
                ["a", "2024-03-01", "order", "5", "1", "e1"],
                ["a", "2024-03-02", "order", "5", "1", "e2"],
            ],
            columns=("user_id", "timestamp", "event_type", "amount", "quantity", "event_id"),
        )
    )
    assert len(result.events) == 2
    assert reasons(result) == {2: "duplicate event_id"}


def test_extra_columns_are_profile_columns_and_rows_are_conserved():
    raw = frame(
        [["a", "2024-03-01", "order", "5", "1", "US"], ["b", "bad", "order", "5", "1", "DE"]],
        columns=("user_id", "timestamp", "event_type", "amount", "quantity", "country"),
    )
    result = validate_events(raw)
    assert result.profile_columns == ("country",)
    assert result.events["country"].tolist() == ["US"]
    assert result.rows_in == len(raw) == len(result.events) + len(result.rejected)


def test_datetime_columns_with_timezone_are_accepted(tmp_path):
    raw = pd.DataFrame(
        {
            "user_id": ["a", "b"],
            "timestamp": pd.to_datetime(["2024-03-01 12:00", "2024-03-02 12:00"]).tz_localize(
                "Europe/Berlin"
            ),
            "event_type": ["order", "order"],
            "amount": [1.0, 2.0],
            "quantity": [1, 1],
        }
    )
    path = tmp_path / "events.parquet"
    raw.to_parquet(path)
    result = validate_events(read_event_file(str(path)))
    assert result.events["timestamp"].tolist() == [
        pd.Timestamp("2024-03-01 11:00"),
        pd.Timestamp("2024-03-02 11:00"),
    ]


def test_reading_an_empty_or_unsupported_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(EventLogError, match="cannot read"):
        read_event_file(str(empty))
    with pytest.raises(EventLogError, match="unsupported file type"):
        read_event_file(str(tmp_path / "events.json"))
