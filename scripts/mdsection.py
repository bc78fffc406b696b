"""Rewrite one ``## `` section of a Markdown results file, keeping everything else.

The benchmark scripts each own a section of docs/benchmarks.md (or docs/scaling.md);
hand-written sections such as ``## Notes`` survive a re-run of any of them.
"""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, title: str, heading: str, body: list[str]) -> None:
    """Put ``## heading`` followed by ``body`` lines into ``path``.

    An existing section of that heading (up to the next ``## `` heading) is replaced in
    place; a new one goes before ``## Notes`` if there is one, else at the end.  A new
    file starts with ``# title``."""
    path = Path(path)
    text = path.read_text() if path.is_file() else f"# {title}\n"
    section = "\n".join([f"## {heading}", "", *body]).rstrip("\n") + "\n"
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    mine = [i for i in starts if lines[i].strip() == f"## {heading}"]
    if mine:
        begin = mine[0]
        end = next((i for i in starts if i > begin), len(lines))
        lines[begin:end] = [section + ("\n" if end < len(lines) else "")]
    else:
        notes = [i for i in starts if lines[i].strip() == "## Notes"]
        at = notes[0] if notes else len(lines)
        if at == len(lines) and lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines[at:at] = ["\n" if at and lines[at - 1].strip() else "", section, "\n" if notes else ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
