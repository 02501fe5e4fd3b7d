"""Rendering the query state machine from its file in ``statemachines/``.

The file is the single definition both runtimes execute. Its Parallel state holds one branch *template*
written in terms of ``${ShardIndex}``; :func:`render_definition` expands it once per shard, so the shard count
is configuration. The remaining ``${Name}`` placeholders (function ARNs) are substituted by the CDK app's
``definition_substitutions`` when deployed and by :func:`substitute` in the local runtime.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

SHARD_INDEX: Final = "ShardIndex"
_SHARD_TOKEN: Final = "${ShardIndex}"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z][A-Za-z0-9_]*)\}")

#: Placeholders the query definition needs after branch expansion, with the function each names.
QUERY_FUNCTIONS: Final[Mapping[str, str]] = {
    "EmbedFunctionArn": "embed",
    "RouteFunctionArn": "route",
    "ShardSearchFunctionArn": "shard_search",
    "FeedbackFunctionArn": "feedback",
    "FuseGenerateFunctionArn": "fuse_generate",
}


class DefinitionError(ValueError):
    """The definition file or its substitutions are inconsistent."""


def _instantiate(node: Any, index: int) -> Any:
    """Copy a branch template with ``${ShardIndex}`` replaced: a value that is exactly the token becomes the
    integer, a token inside a longer string (a state name, a JSONPath) becomes its digits."""
    if isinstance(node, dict):
        return {_instantiate(k, index): _instantiate(v, index) for k, v in node.items()}
    if isinstance(node, list):
        return [_instantiate(v, index) for v in node]
    if isinstance(node, str):
        if node == _SHARD_TOKEN:
            return index
        return node.replace(_SHARD_TOKEN, str(index))
    return node


def _expand(node: Any, shard_count: int) -> tuple[Any, int]:
    """Expand every Parallel state whose single branch is a shard template; return the count expanded."""
    expanded = 0
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out[key], n = _expand(value, shard_count)
            expanded += n
        branches = out.get("Branches")
        if out.get("Type") == "Parallel" and isinstance(branches, list):
            templates = [b for b in branches if _SHARD_TOKEN in json.dumps(b)]
            if templates:
                if len(branches) != 1:
                    raise DefinitionError("a shard Parallel state must hold exactly one branch template")
                out["Branches"] = [_instantiate(branches[0], i) for i in range(shard_count)]
                expanded += 1
        return out, expanded
    if isinstance(node, list):
        items = []
        for value in node:
            item, n = _expand(value, shard_count)
            items.append(item)
            expanded += n
        return items, expanded
    return node, 0


def render_definition(template: str, shard_count: int) -> str:
    """The definition with the shard branches expanded; ARN placeholders are left for substitution."""
    if shard_count < 1:
        raise DefinitionError("shard_count must be at least 1")
    try:
        document = json.loads(template)
    except ValueError as exc:
        raise DefinitionError(f"state machine definition is not JSON: {exc}") from None
    rendered, expanded = _expand(document, shard_count)
    if expanded == 0:
        raise DefinitionError("no Parallel state with a ${ShardIndex} branch template found")
    text = json.dumps(rendered, indent=1)
    if _SHARD_TOKEN in text:
        raise DefinitionError("${ShardIndex} used outside the Parallel branch template")
    return text


def placeholders(definition: str) -> set[str]:
    """Names of the ``${Name}`` placeholders left in a definition."""
    return set(PLACEHOLDER.findall(definition))


def substitute(definition: str, values: Mapping[str, str]) -> str:
    """Replace every placeholder; fail on a missing or an unused value (both are wiring mistakes)."""
    wanted = placeholders(definition)
    missing = wanted - set(values)
    unused = set(values) - wanted
    if missing or unused:
        raise DefinitionError(f"substitutions missing {sorted(missing)} / unused {sorted(unused)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], definition)
