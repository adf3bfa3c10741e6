"""Turning measurements into the tables people read: plain text, Markdown, JSON.

A cell is a plain dict (workload, peer, status, runs, median, error) so that it
goes to JSON as it is. The table has one row per metric: the median of each peer,
then the ratio subject ÷ peer for every other peer.
"""

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent


def machine() -> Dict[str, object]:
    """What the numbers were measured on."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "revision": _git_revision(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def machine_line(info: Dict[str, object]) -> str:
    """One line naming the machine, for the top of every table."""
    return (f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, "
            f"{info['platform']}; scoop_rt {info['revision']}; {info['date']}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _git_revision() -> str:
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return done.stdout.strip() or "uncommitted tree"


def table(cells, workloads, peers, subject, workers) -> Tuple[List[str], List[List[str]]]:
    """The header and rows: metric, each peer's median, subject ÷ each other peer
    (ratio columns only when the subject is among the peers)."""
    names = [peer.name for peer in peers]
    others = [peer for peer in peers if peer.name != subject] if subject in names else []
    header = (["workload [unit, which is better]"] + [peer.label for peer in peers]
              + [f"ratio vs {peer.label}" for peer in others])
    rows = []
    for workload in workloads:
        n = workload.size
        for metric in workload.metrics:
            title = metric.title.format(n=n, workers=workers)
            row = [f"{title} [{metric.unit}, {metric.better} is better]"]
            row += [_value(cells[workload.name, peer.name], metric.key) for peer in peers]
            mine = cells.get((workload.name, subject))
            row += [_ratio(mine, cells[workload.name, peer.name], metric.key)
                    for peer in others]
            rows.append(row)
    return header, rows


def _value(cell, key) -> str:
    if cell["status"] != "ok":
        return cell["status"]
    value = cell["median"].get(key)
    return "error" if value is None else _number(value)


def _ratio(mine, theirs, key) -> str:
    if mine is None or mine["status"] != "ok" or theirs["status"] != "ok":
        return "-"
    a, b = mine["median"].get(key), theirs["median"].get(key)
    return "-" if a is None or not b else f"{a / b:.2f}"


def _number(value: float) -> str:
    """Three significant digits, thousands separated: 5,672 / 61.3 / 0.444."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def spread_notes(cells, workloads, peers, limit: float = 2.0) -> List[str]:
    """Name the medians whose runs differ by more than `limit`× (max ÷ min).

    A median hides a bimodal runtime; these notes say where to look in the JSON.
    """
    notes = []
    for workload in workloads:
        for metric in workload.metrics:
            for peer in peers:
                cell = cells[workload.name, peer.name]
                values = [run.get(metric.key) for run in cell["runs"]]
                if cell["status"] != "ok" or not all(values) or len(values) < 2:
                    continue
                if max(values) / min(values) > limit:
                    notes.append(f"{peer.label}, {workload.name}: {len(values)} runs "
                                 f"ranged from {_number(min(values))} to "
                                 f"{_number(max(values))} ({metric.unit})")
    return notes


def ratio_note(subject: str) -> str:
    """How to read the ratio columns."""
    return (f"Ratios are {subject} ÷ peer: where lower is better, below 1 "
            f"means {subject} is faster; where higher is better, above 1 does.")


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first column left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells):
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        return " | ".join([first, *rest]).rstrip()

    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table in Markdown."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
