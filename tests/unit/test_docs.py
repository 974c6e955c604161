"""The docs a user reads agree with the product:

- the reference pages (CLI, settings, the module table) are generated from the code and
  not stale (scripts/docs.py);
- every `boneseg ...` command line in README.md and docs/ parses with the CLI's own
  parser (so a renamed command or flag breaks this test, not a user's copy-paste);
- no tracked text speaks of how the project was made instead of what it does.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from boneseg.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_generated_reference_pages_are_current():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "docs.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def command_lines() -> list[tuple[str, str]]:
    """(page:line, command) for every `boneseg ...` line in a code block or inline code."""
    found = []
    for page in DOCS:
        in_block = False
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if line.startswith("```"):
                in_block = not in_block
                continue
            chunks = [line] if in_block else re.findall(r"`(boneseg [^`]+)`", line)
            for chunk in chunks:
                text = chunk.split("  #")[0].split(" # ")[0].strip().removeprefix("$ ")
                text = re.sub(r"^\.venv/bin/", "", text)
                if text.startswith("boneseg ") and not text.startswith("boneseg <"):
                    found.append((f"{page.relative_to(ROOT)}:{n}", text))
    return found


def options(parser: argparse.ArgumentParser) -> tuple[set[str], dict[str, argparse.ArgumentParser]]:
    flags = {s for a in parser._actions for s in a.option_strings}
    subs = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
    return flags, subs


def test_every_documented_command_and_flag_exists():
    """Each documented line names a real command (and action) and only flags it has; a
    line may leave out required arguments (prose quotes a command in part)."""
    top_flags, commands = options(build_parser())
    bad = []
    for where, text in command_lines():
        words, skip = [], False
        for w in text.split()[1:]:  # the global settings options and their values go first
            if skip or w in ("--params", "--experiment", "--set"):
                skip = not skip
                continue
            words.append(w)
        cmd = next((w for w in words if not w.startswith("-")), None)
        if cmd is None or cmd.startswith("<"):
            continue
        if cmd not in commands:
            bad.append(f"{where}: `{text}`: no command {cmd!r}")
            continue
        flags, actions = options(commands[cmd])
        rest = words[words.index(cmd) + 1:]
        if actions:
            act = next((w for w in rest if not w.startswith("-")), None)
            if act is None:
                continue
            if act not in actions:
                bad.append(f"{where}: `{text}`: `boneseg {cmd}` has no action {act!r}")
                continue
            flags |= options(actions[act])[0]
        for w in rest:
            flag = w.split("=")[0].strip(",.;:)[]")
            if flag.startswith("--") and flag not in flags | top_flags:
                bad.append(f"{where}: `{text}`: `boneseg {cmd}` has no option {flag}")
    assert len(command_lines()) > 40
    assert not bad, "documented commands that the CLI does not have:\n" + "\n".join(bad)


# words that describe how boneseg was built, not what it does
HISTORY = re.compile(r"\b(session|issue|ticket)\s*#?\d+|\b(was|is|been|were) lent\b|\bin this session\b"
                     r"|\bwork period\b|\bthe (?:last|previous|next) session\b", re.I)


def test_no_tracked_text_speaks_of_how_the_project_was_made():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    hits = []
    for rel in files:
        p = ROOT / rel
        if rel == "CHANGELOG.md" or p.suffix not in (".md", ".py", ".sh", ".yaml", ".toml", ".txt") \
                or not p.is_file() or rel == "tests/unit/test_docs.py":
            continue
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("page", ["troubleshooting.md", "glossary.md"])
def test_troubleshooting_and_glossary_exist(page):
    text = (ROOT / "docs" / page).read_text()
    assert len(text.splitlines()) > 20
