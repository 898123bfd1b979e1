"""Put a label-efficiency report together: the hand-written reading over the generated tables.

A committed report such as ``label_efficiency_after_reference_settings.md`` is a title, the
sections each session wrote (newest first), then the tables that ``label_efficiency.py``
generates (from the line ``# Label efficiency of the semi-supervised methods``). This keeps
the written sections, puts ``--section`` (a new one) first under the title, and replaces the
generated part with ``--generated`` (a fresh ``label_efficiency.md``):

    python bench/compose_report.py --report bench/results/label_efficiency_after_reference_settings.md \\
        --generated SCRATCH/results/label_efficiency.md [--section new_section.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from SSLSegmentLib.fileio import atomic_write_text  # noqa: E402

GENERATED_TITLE = "# Label efficiency of the semi-supervised methods"


def compose(report: str, generated: str, section: str = "") -> str:
    """The report with ``section`` first under its title and its generated part replaced."""
    if GENERATED_TITLE not in report or not generated.startswith(GENERATED_TITLE):
        raise ValueError(f"both texts need the generated part's title {GENERATED_TITLE!r}")
    written = report[:report.index(GENERATED_TITLE)]
    title, _, sections = written.partition("\n\n")
    parts = [title, section.strip(), sections.strip(), generated.strip()]
    return "\n\n".join(p for p in parts if p) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", type=Path, required=True, help="the committed report (rewritten in place)")
    p.add_argument("--generated", type=Path, required=True, help="a fresh label_efficiency.md")
    p.add_argument("--section", type=Path, help="a new section, put first")
    args = p.parse_args(argv)
    section = args.section.read_text() if args.section else ""
    atomic_write_text(args.report, compose(args.report.read_text(), args.generated.read_text(), section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
