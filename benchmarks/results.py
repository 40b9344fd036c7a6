"""benchmarks/RESULTS.md: one `## ` section per benchmark, replaced in place when it is re-run."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(heading: str, section: str, path: Path = RESULTS) -> None:
    """Replace the section that starts with `heading` (up to the next `## `), or append it."""
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + (text[end + 1:] if end >= 0 else "")
    path.write_text(text.rstrip() + "\n\n" + section.rstrip() + "\n")


def publish(heading: str, section: str, write: bool) -> int:
    """Print a benchmark's section; with `write` (the scripts' --write) also put it in RESULTS.md."""
    print(section)
    if write:
        write_section(heading, section)
    return 0
