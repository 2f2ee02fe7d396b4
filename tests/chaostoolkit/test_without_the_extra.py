"""``import tailguard`` never needs Chaos Toolkit; the driver says how to install it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
sys.modules["chaoslib"] = None  # as if chaostoolkit-lib were not installed
import tailguard, tailguard.cli, tailguard.chaos, tailguard.gameday.shop
import tailguard.chaostoolkit  # the package itself imports nothing of Chaos Toolkit
try:
    import tailguard.chaostoolkit.probes
except ImportError as exc:
    print(exc)
try:
    tailguard.chaostoolkit.discover()
except ImportError as exc:
    print(exc)
"""


def test_tailguard_imports_without_chaos_toolkit_and_the_driver_names_the_extra() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    hint = "tailguard.chaostoolkit needs Chaos Toolkit: pip install 'tailguard[chaostoolkit]'"
    assert done.stdout == f"{hint}\n{hint}\n"
