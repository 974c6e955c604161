"""The keys docs/reference/outputs.md lists, per table (`<!-- keys: NAME -->`): the sweep's
test compares them with what a real sweep writes, so the page cannot go stale."""
from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "reference" / "outputs.md"


def documented_keys() -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    name = None
    for line in DOC.read_text().splitlines():
        m = re.match(r"<!-- keys: (\S+) -->", line)
        if m:
            name = m.group(1)
            tables[name] = set()
        elif name and line.startswith("| `"):
            first_cell = line.split("|")[1]
            tables[name] |= set(re.findall(r"`([^`]+)`", first_cell))
        elif name and not line.startswith("|"):
            name = None if tables[name] else name
    return tables
