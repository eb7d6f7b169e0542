"""Scoring API requests made of real CDNOW customers (the demo's and the serving benchmark's)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# The benchmark protocol's cutoff: requests carry each customer's orders before it.
CDNOW_AS_OF = "1997-10-01"


def cdnow_scoring_request(choose: Callable[[Any], Iterable[str]], as_of: str = CDNOW_AS_OF) -> dict:
    """A ``POST /v1/scores`` body of the CDNOW customers ``choose`` picks, each with its orders before
    ``as_of``. ``choose`` gets one row per customer (index ``user_id``; columns ``orders``, ``spend``,
    ``last`` = time of the last order) and returns user ids."""
    from churnguard.datasets import load_cdnow

    events = load_cdnow()
    events = events[events["timestamp"] < as_of]
    per_user = events.groupby("user_id").agg(
        orders=("amount", "size"), spend=("amount", "sum"), last=("timestamp", "max")
    )
    customers = []
    for user in choose(per_user):
        rows = events[events["user_id"] == user]
        customers.append(
            {
                "user_id": user,
                "as_of": as_of,
                "events": [
                    {
                        "timestamp": t.strftime("%Y-%m-%d"),
                        "event_type": "order",
                        "amount": float(a),
                        "quantity": float(q),
                    }
                    for t, a, q in zip(rows["timestamp"], rows["amount"], rows["quantity"], strict=True)
                ],
            }
        )
    return {"customers": customers}


def one_time_lapsed_and_active(per_user: Any) -> list[str]:
    """Three contrasting customers: a one-time buyer, the most valuable lapsed one (no order since
    1997-05-01), the most active one."""
    one_time = per_user[per_user["orders"] == 1].index[0]
    lapsed = per_user[per_user["last"] < "1997-05-01"]["spend"].idxmax()
    active = per_user["orders"].idxmax()
    return [one_time, lapsed, active]


def first_with_six_orders(per_user: Any) -> list[str]:
    """One customer with several orders (the first with exactly six)."""
    return [per_user[per_user["orders"] == 6].index[0]]
