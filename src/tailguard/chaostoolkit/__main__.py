"""``python -m tailguard.chaostoolkit``: the extension's discovery, as JSON, on stdout.

What ``chaos discover`` writes to ``discovery.json`` for an extension; e.g.
``python -m tailguard.chaostoolkit > discovery.json``.
"""

import json
import sys

from tailguard.chaostoolkit import discover

__all__ = ["main"]


def main() -> int:
    """Print :func:`tailguard.chaostoolkit.discover`'s answer; exit status 0."""
    json.dump(discover(), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a program by the tests
    sys.exit(main())
