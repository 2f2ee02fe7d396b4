"""YAML experiment files: PyYAML's safe loader, refusing duplicate keys.

PyYAML keeps the last of two equal keys without a word; in an experiment file
that silently drops a setting, so it is an error here, as in JSON.

>>> parse_yaml(b"name: x\\nttl: 60\\n")
{'name': 'x', 'ttl': 60}
"""

from __future__ import annotations

from typing import Any

from tailguard.chaos._fields import ExperimentError

__all__ = ["parse_yaml"]


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

    try:
        return yaml.load(document, Loader=UniqueKeyLoader)
    except RecursionError:
        raise ExperimentError("", "not valid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise ExperimentError("", f"not valid YAML: {exc}") from None
