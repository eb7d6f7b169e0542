"""Control-group assignment (``churnguard.control``, issue 10 §1): deterministic per customer and
campaign period, the configured share held out, re-drawn independently each period, 0 disables."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from churnguard.control import ControlPolicy

START = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
USERS = [f"customer-{i}" for i in range(40_000)]


def held_out(policy: ControlPolicy, at: dt.datetime) -> set[str]:
    return {u for u in USERS if policy.arm(u, at) == "control"}


def test_the_held_out_share_is_the_fraction_within_sampling_error():
    policy = ControlPolicy(fraction=0.10, salt="s1")
    share = len(held_out(policy, START)) / len(USERS)
    assert abs(share - 0.10) < 4 * math.sqrt(0.1 * 0.9 / len(USERS))  # 4 standard errors


def test_a_customer_keeps_their_arm_for_the_whole_period_and_is_redrawn_in_the_next():
    policy = ControlPolicy(fraction=0.10, salt="s1", period_days=28)
    first = policy.period(START)
    begin = dt.datetime.fromtimestamp(first * 28 * 86_400, dt.UTC)
    end = begin + dt.timedelta(days=28) - dt.timedelta(microseconds=1)
    same = held_out(policy, begin)
    assert held_out(policy, end) == same and held_out(policy, begin + dt.timedelta(days=13)) == same
    following = held_out(policy, end + dt.timedelta(microseconds=1))
    overlap = len(same & following) / len(same)
    assert abs(overlap - 0.10) < 0.03  # independent draws: a control customer stays one at ~fraction


def test_the_arm_depends_on_the_salt_and_not_on_the_clock_zone():
    a, b = ControlPolicy(fraction=0.1, salt="a"), ControlPolicy(fraction=0.1, salt="b")
    assert held_out(a, START) != held_out(b, START)
    paris = START.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert held_out(a, paris) == held_out(a, START)
    with pytest.raises(ValueError, match="timezone-aware"):
        a.arm("customer-1", START.replace(tzinfo=None))


def test_fraction_zero_treats_everyone_and_bad_settings_are_refused():
    assert held_out(ControlPolicy(fraction=0.0, salt="s1"), START) == set()
    for bad in (
        {"fraction": 1.0},
        {"fraction": -0.1},
        {"fraction": math.nan},
        {"period_days": 0},
        {"period_days": 1.5},
    ):
        with pytest.raises(ValueError, match=r"fraction|period_days"):
            ControlPolicy(**bad)
