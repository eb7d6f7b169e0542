"""Pydantic validation errors as text that names fields, never values: one format for every
input (the API's 422, a refused queue message, a sweep payload, a dataset manifest, the settings).

A location ``("events", 0, "amount")`` reads ``events[0].amount``. With ``known`` (the field names
of the models), any other key in a location (a profile key, an unknown field: chosen by the sender,
possibly a customer id) reads ``<key>``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pydantic import ValidationError


def field_path(location: Sequence[int | str], *, known: Collection[str] | None = None) -> str:
    """``events[0].amount`` for ``("events", 0, "amount")``; "" for an empty location."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        name = part if known is None or part in known else "<key>"
        if name == "<key>" and path.endswith("<key>"):
            continue  # a union's branches under a sender's key say nothing more
        path += f".{name}" if path else name
    return path


def describe(
    exc: ValidationError,
    *,
    root: str,
    skip: int = 0,
    known: Collection[str] | None = None,
    limit: int | None = None,
) -> str:
    """``"events[0].amount: Input should be ...; ..."``: each error's location (after its first
    ``skip`` parts; ``root`` when nothing is left) and message, repeated ones once."""
    problems = [
        f"{field_path(error['loc'][skip:], known=known) or root}: {error['msg']}"
        for error in exc.errors()[:limit]
    ]
    return "; ".join(dict.fromkeys(problems))
