"""admission/'s import layout: errors, adaptive and a generic queue below the limiter, no cycles.

Every import counts, including those under ``TYPE_CHECKING`` and inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tailguard.admission

PACKAGE = Path(tailguard.admission.__file__).parent


def _imports(module: str) -> set[str]:
    """The admission modules that ``module`` imports, anywhere in its source."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}.py: use absolute imports"
            names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            head, _, rest = name.partition("tailguard.admission.")
            if not head and rest:
                found.add(rest.partition(".")[0])
    return found


def test_admission_modules_import_only_downwards() -> None:
    modules = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__")
    assert {module: sorted(_imports(module)) for module in modules} == {
        "adaptive": [],
        "errors": [],
        "limiter": ["adaptive", "errors", "queue"],
        "queue": [],  # generic: the limiter builds on it, it knows nothing of permits
    }
