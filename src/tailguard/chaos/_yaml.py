"""YAML experiment files: PyYAML's safe loader, refusing duplicate keys and alias bombs.

PyYAML keeps the last of two equal keys without a word; in an experiment file
that silently drops a setting, so it is an error here, as in JSON.

Anchors and aliases are allowed (a file may reuse a delay), but the document
they expand to is bounded: at most :data:`MAX_NODES` values once every alias
is expanded, and no alias inside itself. A few hundred bytes of nested aliases
("billion laughs") would otherwise expand to gigabytes when the document is
validated or sent as JSON. Integers longer than Python reads (4,300 digits)
are refused with a message rather than a traceback.

>>> parse_yaml(b"name: x\\nttl: 60\\n")
{'name': 'x', 'ttl': 60}
>>> parse_yaml(b"a: &x [1, 2]\\nb: *x\\n")
{'a': [1, 2], 'b': [1, 2]}
"""

from __future__ import annotations

import sys
from typing import Any

from tailguard.chaos._fields import ExperimentError

__all__ = ["MAX_NODES", "parse_yaml"]

MAX_NODES = 100_000
"""The most values (scalars, lists, mappings) a YAML document may expand to.

An experiment has at most 32 faults and an empirical delay at most 10,000
samples; a document that expands to more is an alias bomb, not an experiment.
"""


def _expanded_size(root: Any, limit: int) -> int:
    """How many nodes ``root`` holds with every alias expanded; stops counting past ``limit``.

    PyYAML composes an alias as a second reference to its anchor's node, so
    the graph stays small while its expansion can be exponential: sizes are
    memoized per node, and a node met again on its own path is a cycle.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        known = sizes.get(key)
        if known is not None:
            return known
        if key in on_path:
            raise ExperimentError("", "not valid YAML: an alias refers to a node that contains it")
        on_path.add(key)
        total = 1
        value = node.value
        if isinstance(value, list):
            for item in value:
                children = item if isinstance(item, tuple) else (item,)  # mapping pairs
                for child in children:
                    total += size(child)
                    if total > limit:
                        break
                if total > limit:
                    break
        on_path.discard(key)
        sizes[key] = total
        return total

    return size(root)


def parse_yaml(document: bytes) -> object:
    """Parse one YAML document with the safe loader; raise :class:`ExperimentError` if malformed."""
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "reading YAML experiment files needs PyYAML: pip install 'tailguard[yaml]'"
        ) from exc

    class UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: list[object] = []
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.append(key)
            return super().construct_mapping(node, deep=deep)

    loader = UniqueKeyLoader(document)
    try:
        node = loader.get_single_node()
        if node is None:  # an empty file
            return None
        if _expanded_size(node, MAX_NODES) > MAX_NODES:
            raise ExperimentError(
                "",
                f"not valid YAML: its aliases expand to more than {MAX_NODES} values "
                "(an alias bomb?); write the values out, or use fewer aliases",
            )
        return loader.construct_document(node)
    except RecursionError:
        raise ExperimentError("", "not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise ExperimentError("", f"not valid YAML: {exc}") from None
    except ValueError as exc:  # not ours: int() refusing a number longer than 4,300 digits
        if isinstance(exc, ExperimentError):
            raise
        reason = (
            f"an integer has more than {sys.get_int_max_str_digits()} digits"
            if "digits" in str(exc)
            else exc
        )
        raise ExperimentError("", f"not valid YAML: {reason}") from None
    finally:
        loader.dispose()
