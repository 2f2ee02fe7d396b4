"""Draw each dashboard's panel layout (gridPos boxes and titles) to docs/dashboards-layout.png.

pip install 'tailguard[dashboards,layout]'
python dashboards/render_layout.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from tailguard.telemetry.dashboards import dashboards, render

COLORS = {"timeseries": "#dbe9f6", "stat": "#fde2c8", "row": "#3b4252"}


def main(out: Path) -> None:
    built = [render(dashboard) for dashboard in dashboards()]
    heights = [max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in d["panels"]) for d in built]
    figure, axes = plt.subplots(
        1, len(built), figsize=(8 * len(built), max(heights) * 0.32), squeeze=False
    )
    for axis, dashboard, height in zip(axes[0], built, heights, strict=True):
        axis.set_xlim(0, 24)
        axis.set_ylim(max(heights), 0)
        axis.set_axis_off()
        axis.set_title(dashboard["title"], fontsize=13, loc="left")
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            row = panel["type"] == "row"
            axis.add_patch(
                Rectangle(
                    (grid["x"] + 0.1, grid["y"] + 0.1),
                    grid["w"] - 0.2,
                    grid["h"] - 0.2,
                    facecolor=COLORS[panel["type"]],
                    edgecolor="#5e81ac",
                )
            )
            label = panel["title"]
            if not row:
                label += f"\n[{panel['fieldConfig']['defaults']['unit']}]"
            axis.text(
                grid["x"] + 0.3,
                grid["y"] + (0.55 if row else 0.5),
                label,
                va="center" if row else "top",
                fontsize=7 if not row else 8,
                color="white" if row else "black",
                wrap=True,
                fontweight="bold" if row else "normal",
            )
        del height
    figure.tight_layout()
    figure.savefig(out, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/dashboards-layout.png"))
