"""The layers and the wiring, checked from the code itself (docs/architecture.md).

- every dvc.yaml stage lists the package files its command runs (its import closure);
- the library layer (boneseg.core) imports no stage, sweep or tracking module, no Ray,
  no MLflow and no argparse; Ray lives only in the sweep's driver and trial adapter,
  MLflow only in boneseg.tracking;
- no module is over ~300 lines without saying why in its docstring.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from boneseg.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "platform" / "boneseg"


def module_file(name: str) -> Path | None:
    p = ROOT / "platform" / Path(*name.split("."))
    for c in (p.with_suffix(".py"), p / "__init__.py"):
        if c.is_file():
            return c
    return None


def imported(path: Path) -> set[str]:
    """Every module name a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def closure(start: Path) -> set[Path]:
    """The boneseg files a module runs: itself, what it imports, and their parent packages."""
    seen, todo = set(), [start]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in imported(f):
            if not name.startswith("boneseg"):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # boneseg.core.x imports boneseg/__init__, core/__init__ too
                m = module_file(".".join(parts[:i]))
                if m is not None:
                    todo.append(m)
    return seen


def stage_modules() -> dict[str, Path]:
    """`boneseg <command>` -> the file of the module that runs it (from the CLI's own parser)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {cmd: Path(__import__(p.get_default("func").__module__, fromlist=["x"]).__file__)
            for cmd, p in sub.choices.items()}


def test_every_dvc_stage_lists_the_code_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    modules = stage_modules()
    problems = []
    for name, st in stages.items():
        words = str(st["cmd"]).split()
        assert words[0] == "boneseg", f"stage {name}: expected a `boneseg <command>` cmd"
        cmd = next(w for w in words[1:] if not w.startswith("-"))
        deps = [ROOT / d for d in st.get("deps", [])]
        for f in sorted(closure(modules[cmd])):
            if not any(f == d or d in f.parents for d in deps):
                problems.append(
                    f"stage {name} (`boneseg {cmd}`) runs {f.relative_to(ROOT)} but does not list it"
                )
        for d in deps:
            if str(d).startswith(str(PKG)) and not any(
                f == d or d in f.parents for f in closure(modules[cmd])
            ):
                problems.append(f"stage {name} lists {d.relative_to(ROOT)}, which it does not run")
    assert not problems, "\n".join(problems)


def files_of(layer: str) -> list[Path]:
    return sorted((PKG / layer).rglob("*.py"))


FORBIDDEN = {
    "core": (
        "boneseg.stages",
        "boneseg.sweep",
        "boneseg.tracking",
        "boneseg.cli",
        "ray",
        "mlflow",
        "argparse",
    ),
    "tracking": ("boneseg.stages", "boneseg.sweep", "boneseg.cli", "ray"),
    "sweep": ("boneseg.stages", "boneseg.cli"),
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_what_they_may(layer):
    bad = [f"{f.relative_to(PKG)} imports {m}" for f in files_of(layer) for m in sorted(imported(f))
           if m.split(".")[0] in ("ray", "mlflow", "argparse") and m.split(".")[0] in FORBIDDEN[layer]
           or any(m == p or m.startswith(p + ".") for p in FORBIDDEN[layer] if p.startswith("boneseg"))]
    assert not bad, "\n".join(bad)


def test_ray_and_mlflow_live_only_at_the_edges():
    ray_ok = {PKG / "sweep" / n for n in ("driver.py", "tracker.py", "trial.py")}
    for f in PKG.rglob("*.py"):
        names = {m.split(".")[0] for m in imported(f)}
        if "ray" in names:
            assert f in ray_ok, f"{f.relative_to(PKG)} imports ray"
        if "mlflow" in names:
            assert f.parent == PKG / "tracking", f"{f.relative_to(PKG)} imports mlflow"


def test_sweep_results_need_no_ray():
    assert not {m for m in imported(PKG / "sweep" / "results.py") if m.startswith(("ray", "mlflow"))}


def test_no_module_over_300_lines_without_a_reason():
    for f in PKG.rglob("*.py"):
        n = len(f.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(f.read_text())) or ""
        assert n <= 300 or "lines:" in doc, f"{f.relative_to(PKG)}: {n} lines and no reason in its docstring"


def test_package_inits_hold_no_code_that_imports():
    for f in PKG.rglob("__init__.py"):
        assert not {m for m in imported(f) if m.startswith("boneseg")}, (
            f"{f.relative_to(PKG)} imports boneseg"
        )
