"""Validation errors as text (``churnguard.validation``): one field format for every input, and
keys the sender chose never quoted when the known field names are given."""

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from churnguard.validation import describe, field_path


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: float
    profile: dict[str, str | float] = {}


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Event]


KNOWN = frozenset(Body.model_fields) | frozenset(Event.model_fields)


@pytest.mark.parametrize(
    ("location", "known", "path"),
    [
        (("events", 0, "amount"), None, "events[0].amount"),
        (("parts", 1, "key"), None, "parts[1].key"),
        ((), None, ""),
        (("events", 2, "profile", "alice@example.com", "str"), KNOWN, "events[2].profile.<key>"),
        (("cust-4711",), KNOWN, "<key>"),
    ],
)
def test_a_location_reads_as_a_field_path(location, known, path):
    assert field_path(location, known=known) == path


def test_describe_names_each_field_once_and_never_a_sender_key():
    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"events": [{"amount": "x", "profile": {"alice@example.com": [1]}}], "bob": 1})
    text = describe(caught.value, root="body", known=KNOWN)
    assert "events[0].amount: " in text and "events[0].profile.<key>: " in text and "<key>: Extra" in text
    assert "alice" not in text and "bob" not in text
    assert text.count("events[0].profile.<key>: Input should be a valid string") == 1
    with pytest.raises(ValidationError) as whole:
        Body.model_validate([])
    assert describe(whole.value, root="body").startswith("body: ")
