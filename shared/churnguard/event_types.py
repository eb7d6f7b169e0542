"""The one definition of the canonical event types; everything else is derived from ``EVENT_TYPE_TABLE``.

Adding an event type means adding one row here (and, if it needs a new reason group, that group).
From this table come: the accepted types and their order (``features.EVENT_TYPES``, which also sets the
model's channel and static-feature order), the HTTP ``event_type`` enum (``api.EventType``), the batch
reader's integer codes (``batch.TYPE_CODES``), the types training looks for (``training.data``), the
reason group of each type's own static features (``features.static_feature_group``) and that group's
reason text (``reasons.REASON_TEXT``). A new type changes the model inputs, so the committed
``openapi.json`` and the fixture model must then be regenerated (see README, "Adding an event type").

The module is plain data (no numpy, no I/O), so every layer may import it.
"""

from __future__ import annotations

from dataclasses import dataclass

EVENT_TYPE_ORDER = "order"  # churn is defined on orders; its features are the core (recency, spend...)


@dataclass(frozen=True)
class ReasonGroup:
    """A group of static features that is occluded together and named as one reason."""

    name: str
    text: str


@dataclass(frozen=True)
class EventTypeDef:
    """One canonical event type.

    ``code`` is its integer code in the batch reader (row ``code`` of the table). ``reason`` is the
    group of the type's own static features (``{name}_count``, ``..._count_4w``, ``..._recency_days``,
    ``..._per_order``); ``None`` only for ``order``, whose features make up the core groups.
    """

    name: str
    code: int
    reason: ReasonGroup | None


BROWSING = ReasonGroup("browsing", "browsing and cart behaviour")
RETURNS = ReasonGroup("returns", "returns")

# Order matters: it is the order of the model's sequence channels and static features.
EVENT_TYPE_TABLE: tuple[EventTypeDef, ...] = (
    EventTypeDef(EVENT_TYPE_ORDER, 0, None),
    EventTypeDef("view", 1, BROWSING),
    EventTypeDef("cart", 2, BROWSING),
    EventTypeDef("return", 3, RETURNS),
)


def _check(table: tuple[EventTypeDef, ...]) -> None:
    names = [t.name for t in table]
    if len(set(names)) != len(names):
        raise ValueError(f"event type names repeat: {names}")
    if [t.code for t in table] != list(range(len(table))) or len(table) > 127:
        raise ValueError("event type codes must be 0..n-1 in table order and fit in int8")
    for t in table:
        if not t.name or t.name != t.name.strip().lower():  # input types are stripped and lowered
            raise ValueError(f"event type {t.name!r} must be lower case without surrounding blanks")
        if (t.reason is None) != (t.name == EVENT_TYPE_ORDER):
            raise ValueError(
                f"event type {t.name!r}: every type but {EVENT_TYPE_ORDER!r} needs a reason group"
            )
    texts: dict[str, str] = {}
    for t in table:
        if t.reason is not None and texts.setdefault(t.reason.name, t.reason.text) != t.reason.text:
            raise ValueError(f"reason group {t.reason.name!r} has two texts")
    if EVENT_TYPE_ORDER not in names:
        raise ValueError(f"the table must hold {EVENT_TYPE_ORDER!r} (churn is defined on orders)")


_check(EVENT_TYPE_TABLE)

EVENT_TYPES: tuple[str, ...] = tuple(t.name for t in EVENT_TYPE_TABLE)
BY_NAME: dict[str, EventTypeDef] = {t.name: t for t in EVENT_TYPE_TABLE}
TYPE_CODES: dict[str, int] = {t.name: t.code for t in EVENT_TYPE_TABLE}
# Reason groups of the event types' own features, in table order (first use), with their texts.
EVENT_REASON_TEXT: dict[str, str] = {
    t.reason.name: t.reason.text for t in EVENT_TYPE_TABLE if t.reason is not None
}
