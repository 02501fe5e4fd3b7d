"""Compiling request ``filters`` into Milvus boolean expressions.

Every value is emitted as an escaped literal: Milvus Lite rejects filter templates (``filter_params``), so the
compiler is the injection boundary. Field names never come from the request verbatim — they are looked up in
a fixed table — so a hostile key can only produce a 400.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from shardrag.errors import BadRequest
from shardrag.store.literals import escape_string

MAX_IN_VALUES: Final = 100
_RANGE_OPS: Final = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _literal(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRequest(f"filters.{where}: numbers must be finite")
        return repr(value)
    if isinstance(value, str):
        return escape_string(value)
    raise BadRequest(f"filters.{where}: expected a string, number or boolean, got {type(value).__name__}")


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?$")


def _check_type(name: str, declared: str, value: Any) -> None:
    """A value must match its field's declared type: a string compared with a number field matches nothing in
    Milvus and would look like an empty result instead of the client error it is."""
    ok = {
        "string": isinstance(value, str),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        # ISO 8601 strings order correctly as strings, which is how Milvus compares them in JSON fields.
        "date": isinstance(value, str) and bool(_DATE.match(value)),
    }.get(declared, True)
    if not ok:
        raise BadRequest(f"filters.{name}: expected a {declared} value, got {value!r:.60}")


#: The greatest code point: every string that starts with a prefix P sorts in [P, P + _TOP) (byte order of
#: UTF-8 is code-point order), except strings that continue P with U+10FFFF itself, a noncharacter.
_TOP: Final = "\U0010ffff"


def _prefix_range(field: str, prefix: str) -> str:
    """``field`` starts with ``prefix``, as a range rather than ``like "prefix%"``: LIKE gives a backslash its own
    meaning, which Milvus Lite and the server do not agree on (found by a generated key with a backslash), while
    comparisons of escaped literals mean the same everywhere."""
    return f"({field} >= {escape_string(prefix)} and {field} < {escape_string(prefix + _TOP)})"


class FilterCompiler:
    """Turns ``{"doc_id": "x", "source_prefix": "s3://b/a/", "year": {"gte": 2005}, "lang": ["en", "de"]}`` into a
    Milvus expression. ``doc_id`` and ``source_prefix`` are built in; any other key must be a metadata field
    declared in configuration (anything else is a 400, so a typo never silently matches everything)."""

    def __init__(self, metadata_fields: Mapping[str, str] | None = None) -> None:
        self._metadata_fields = dict(metadata_fields or {})

    def _check(self, name: str, value: Any) -> None:
        _check_type(name, self._metadata_fields.get(name, "string"), value)

    def _field(self, name: str) -> str:
        if name == "doc_id":
            # Callers filter by the id they know (object key, bulk line ``_id``), stored as ``external_id``.
            return "external_id"
        if name in self._metadata_fields:
            return f"metadata[{json.dumps(name)}]"
        declared = ", ".join(sorted(["doc_id", "source_prefix", *self._metadata_fields]))
        raise BadRequest(f"filters: unknown field {name[:64]!r}; filterable fields are: {declared}")

    def run(self, filters: Mapping[str, Any] | None, *, tenant: str | None = None) -> str:
        """The Milvus expression for ``filters``; with ``tenant``, scoped to that tenant's chunks first (the
        partition key lets Milvus search only that tenant's partition)."""
        clauses: list[str] = [] if tenant is None else [f"tenant == {escape_string(tenant)}"]
        if not filters:
            return " and ".join(clauses)
        for name in sorted(filters):
            value = filters[name]
            if name == "source_prefix":
                if not isinstance(value, str) or not value:
                    raise BadRequest("filters.source_prefix must be a non-empty string")
                clauses.append(_prefix_range("source", value))
                continue
            field = self._field(name)
            if isinstance(value, list):
                if not value or len(value) > MAX_IN_VALUES:
                    raise BadRequest(f"filters.{name}: a list needs 1..{MAX_IN_VALUES} values")
                # ``in [...]`` on a JSON path is rejected by Milvus Lite; an OR of equalities works everywhere.
                for item in value:
                    self._check(name, item)
                ors = " or ".join(f"{field} == {_literal(v, name)}" for v in value)
                clauses.append(f"({ors})")
            elif isinstance(value, dict):
                if not value or set(value) - set(_RANGE_OPS):
                    raise BadRequest(f"filters.{name}: a range takes gt, gte, lt, lte")
                for op in sorted(value):
                    bound = value[op]
                    if isinstance(bound, bool) or not isinstance(bound, int | float | str):
                        raise BadRequest(f"filters.{name}.{op}: a bound must be a number or an ISO date string")
                    self._check(name, bound)
                    clauses.append(f"{field} {_RANGE_OPS[op]} {_literal(bound, name)}")
            else:
                self._check(name, value)
                clauses.append(f"{field} == {_literal(value, name)}")
        return " and ".join(clauses)
