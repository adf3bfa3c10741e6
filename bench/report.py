"""Turning measurements into the tables people read: plain text, Markdown, JSON.

A cell is a plain dict (workload, peer, status, runs, median, error) so that it
goes to JSON as it is. There are two tables with one row per metric: the median
of each peer, then the ratio subject ÷ peer for every other peer (one wide table
of both no longer fits a terminal with eight peers). Notes under them say what
each peer is and what setting it up cost, why a cell is n/a or error, and where
runs spread widely.
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
        "memory_gib": _memory_gib(),
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
        "revision": _git_revision(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def machine_line(info: Dict[str, object]) -> str:
    """One line naming the machine, for the top of every table."""
    return (f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, "
            f"Python {info['python']}, {info['platform']}; load average "
            f"{' '.join(map(str, info['load_at_start']))} at start; "
            f"scoop_rt {info['revision']}; {info['date']}")


def _memory_gib() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return 0.0


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


def tables(cells, workloads, peers, subject, workers) -> Dict[str, object]:
    """Everything the tables show, as data: one row per metric, with each peer's
    median (None when n/a or error) and the ratio subject ÷ peer for the others
    (ratios only when the subject is among the peers)."""
    names = [peer.name for peer in peers]
    others = [name for name in names if name != subject] if subject in names else []
    rows = []
    for workload in workloads:
        for metric in workload.metrics:
            mine = cells.get((workload.name, subject))
            row = {
                "workload": workload.name, "key": metric.key,
                "title": metric.title.format(n=workload.size, workers=workers),
                "unit": metric.unit, "better": metric.better,
                "values": {}, "shown": {}, "ratios": {},
            }
            for name in names:
                cell = cells[workload.name, name]
                value = cell["median"].get(metric.key) if cell["status"] == "ok" else None
                row["values"][name] = value
                row["shown"][name] = (cell["status"] if cell["status"] != "ok"
                                      else "error" if value is None else _number(value))
                if cell.get("notes") and cell["status"] == "ok":
                    row["shown"][name] += " *"   # see "What the workloads noticed"
            for name in others:
                row["ratios"][name] = _ratio(mine, cells[workload.name, name], metric.key)
            rows.append(row)
    return {"labels": {peer.name: peer.label for peer in peers}, "peers": names,
            "others": others, "rows": rows}


def _grids(tables) -> List[Tuple[str, List[str], List[List[str]]]]:
    """The medians table and the ratios table, as (caption, header, rows)."""
    labels, rows = tables["labels"], tables["rows"]
    medians = (
        "Medians",
        ["workload [unit, which is better]"] + [labels[n] for n in tables["peers"]],
        [[f"{row['title']} [{row['unit']}, {row['better']} is better]"]
         + [row["shown"][n] for n in tables["peers"]] for row in rows],
    )
    grids = [medians]
    if tables["others"]:
        grids.append((
            "Ratios",
            ["workload [which is better]"] + [labels[n] for n in tables["others"]],
            [[f"{row['title']} [{row['better']}]"]
             + ["-" if row["ratios"][n] is None else f"{row['ratios'][n]:.2f}"
                for n in tables["others"]] for row in rows],
        ))
    return grids


def _ratio(mine, theirs, key):
    if mine is None or mine["status"] != "ok" or theirs["status"] != "ok":
        return None
    a, b = mine["median"].get(key), theirs["median"].get(key)
    return None if a is None or not b else a / b


def _number(value: float) -> str:
    """Three significant digits, thousands separated: 5,672 / 61.3 / 0.444."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def peer_notes(peers, descriptions, setups, venv_steps) -> List[str]:
    """What each column is, and what setting it up cost in this run; then the
    steps of bench/.venv that every peer there shares."""
    notes = []
    for peer in peers:
        setup = setups.get(peer.name, {})
        if setup.get("status") == "n/a":
            cost = f"not set up ({setup['seconds']:.1f} s): {setup['error'].splitlines()[0]}"
        elif setup.get("pip_ran"):
            cost = f"pip installed it into bench/.venv in {setup['seconds']:.1f} s"
        else:
            cost = f"ready ({setup.get('seconds', 0):.1f} s)"
        notes.append(f"{peer.label}: {descriptions.get(peer.name, peer.name)}; {cost}")
    for key, step in venv_steps.items():
        if not step["shared"]:
            continue
        what = "python -m venv bench/.venv" if key == "venv" else key
        if step["error"]:
            outcome = f"failed ({step['error'].splitlines()[0]})"
        elif key == "venv":
            outcome = f"made in {step['seconds']:.1f} s"
        elif step["pip_ran"]:
            outcome = f"installed in {step['seconds']:.1f} s, for every peer in bench/.venv"
        else:
            outcome = f"already in bench/.venv ({step['seconds']:.1f} s)"
        notes.append(f"{what}: {outcome}")
    return notes


def why_notes(cells, workloads, peers) -> List[str]:
    """Why each n/a or error cell is one: a peer's reason once if it is the same
    for every workload, else one note per workload."""
    notes = []
    for peer in peers:
        bad = [(w.name, cells[w.name, peer.name]) for w in workloads
               if cells[w.name, peer.name]["status"] != "ok"]
        reasons = {(cell["status"], cell["error"]) for _, cell in bad}
        if len(bad) == len(workloads) and len(reasons) == 1 and len(workloads) > 1:
            status, error = reasons.pop()
            notes.append(f"{peer.label}, every workload: {status}, {error}")
            continue
        notes += [f"{peer.label}, {name}: {cell['status']}, {cell['error']}"
                  for name, cell in bad]
    return notes


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
                    what = (f"{workload.name} ({metric.key})" if len(workload.metrics) > 1
                            else workload.name)
                    notes.append(f"{peer.label}, {what}: {len(values)} runs "
                                 f"ranged from {_number(min(values))} to "
                                 f"{_number(max(values))} ({metric.unit})")
    return notes


def workload_notes(cells, workloads, peers) -> List[str]:
    """The notes that workload scripts reported, once each."""
    notes = []
    for w in workloads:
        for peer in peers:
            cell = cells[w.name, peer.name]
            runs = len(cell["runs"])
            notes += [f"{peer.label}, {w.name}: {note}"
                      + (f" (in {count} of {runs} runs)" if runs > 1 else "")
                      for note, count in cell.get("notes", {}).items()]
    return notes


def ratio_note(subject: str) -> str:
    """How to read the ratio columns."""
    return (f"Ratios {subject} ÷ peer: where lower is better, below 1 "
            f"means {subject} is faster; where higher is better, above 1 does.")


_NOTE_TITLES = (("peers", "Peers"), ("why", "Why n/a or error"),
                ("workloads", "What the workloads noticed (numbers marked *)"),
                ("spread", "Wide spread (runs differ by more than 2×)"))


def text_report(tables, notes, subject: str) -> str:
    """The tables and notes for the terminal."""
    parts = []
    for caption, header, rows in _grids(tables):
        if caption == "Ratios":
            caption = ratio_note(subject)
        parts.append(f"{caption}\n\n{text_table(header, rows)}")
    for key, title in _NOTE_TITLES:
        if notes.get(key):
            parts.append(f"{title}:\n" + "\n".join(f"  {note}" for note in notes[key]))
    return "\n\n".join(parts)


def markdown_report(tables, notes, subject: str) -> str:
    """The same in Markdown."""
    parts = []
    for caption, header, rows in _grids(tables):
        if caption == "Ratios":
            caption = f"Ratios\n\n{ratio_note(subject)}"
        parts.append(f"## {caption}\n\n{markdown_table(header, rows)}")
    for key, title in _NOTE_TITLES:
        if notes.get(key):
            parts.append(f"## {title}\n\n" + "\n".join(f"- {note}" for note in notes[key]))
    return "\n\n".join(parts) + "\n"


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
