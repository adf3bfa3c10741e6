"""A picture of the results: one panel per table row, one bar per peer.

Each panel shows the peers' medians in that row's own unit, with the number at
the end of each bar, n/a or error written where a peer has no number, and the
subject's bar in its own colour. Its title says which direction is better. A row
whose numbers span more than LOG_SPAN× gets a logarithmic axis (said in its
title), so that the small bars stay visible.

matplotlib is optional: without it draw() raises Unavailable, and the harness
goes on with its tables.
"""

import math
from pathlib import Path

LOG_SPAN = 30
SUBJECT_COLOUR = "#d95f02"
PEER_COLOUR = "#7570b3"


class Unavailable(Exception):
    """The chart cannot be drawn here (matplotlib is missing)."""


def draw(results, title: str, path: Path) -> None:
    """Draw latest.json's `results` into the PNG at `path`."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise Unavailable("matplotlib is not installed for this Python; "
                          "pip install matplotlib to get latest.png") from None
    rows = results["rows"]
    labels = results["peers"]
    names = list(labels)
    columns = 2 if len(rows) > 1 else 1
    lines = math.ceil(len(rows) / columns)
    panel_h = 0.32 * len(names) + 1.0
    figure, axes = plt.subplots(lines, columns, squeeze=False,
                                figsize=(7.5 * columns, panel_h * lines + 1.2))
    for ax, row in zip(axes.flat, rows):
        _panel(ax, row, names, labels, results["subject"])
    for ax in list(axes.flat)[len(rows):]:
        ax.set_visible(False)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.6 / (panel_h * lines + 1.2)))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _panel(ax, row, names, labels, subject):
    values = [row["values"][name] for name in names]
    present = [v for v in values if v]
    log = bool(present) and max(present) / min(present) > LOG_SPAN
    positions = range(len(names))
    ax.barh(positions, [v or 0 for v in values],
            color=[SUBJECT_COLOUR if n == subject else PEER_COLOUR for n in names])
    ax.set_yticks(list(positions))
    ax.set_yticklabels([labels[n] for n in names], fontsize=8)
    ax.invert_yaxis()
    scale = " (log scale)" if log else ""
    ax.set_title(f"{row['title']}\n{row['unit']}, {row['better']} is better{scale}",
                 fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(min(present) / 3, max(present) * 8)
    elif present:
        ax.set_xlim(0, max(present) * 1.35)
    for y, (name, value) in enumerate(zip(names, values)):
        text = row["shown"][name]
        x = value if value else (min(present) / 3 if log else 0)
        ax.text(x, y, f" {text}", va="center", fontsize=7,
                color="black" if value else "grey")
