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
    ray_ok = {PKG / "sweep" / n for n in ("driver.py", "tracker.py", "trial.py", "search.py", "session.py",
                                          "cluster.py", "tasks.py")}
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


def subpackage_of(module: str) -> str | None:
    """boneseg.core.<sub>.x -> <sub>; a module directly in core/ -> "base"; else None."""
    parts = module.split(".")
    if parts[:2] != ["boneseg", "core"] or len(parts) < 3:
        return None
    return parts[2] if (PKG / "core" / parts[2]).is_dir() else "base"


def subpackage_edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) sub-package pairs, each with the files that make the edge."""
    edges: dict[tuple[str, str], list[str]] = {}
    for f in files_of("core"):
        rel = f.relative_to(PKG / "core")
        src = rel.parts[0] if len(rel.parts) > 1 else "base"
        for m in imported(f):
            dst = subpackage_of(m)
            if dst and dst != src and not m.endswith(".LAYERS"):
                edges.setdefault((src, dst), []).append(f"{f.relative_to(PKG)} imports {m}")
    return edges


def test_core_subpackages_are_the_declared_layers_and_each_has_a_role():
    from boneseg.core import LAYERS

    present = {p.name for p in (PKG / "core").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert set(LAYERS) == present | {"base"}, "core.LAYERS must list every sub-package of core/"
    for name in present:
        doc = ast.get_docstring(ast.parse((PKG / "core" / name / "__init__.py").read_text())) or ""
        assert doc and len(doc.splitlines()) == 1, f"core/{name}/__init__.py: say its role in one line"


def test_core_subpackages_import_only_downwards():
    from boneseg.core import LAYERS

    rank = {name: i for i, name in enumerate(LAYERS)}
    up = [why for (src, dst), whys in subpackage_edges().items() if rank[dst] > rank[src] for why in whys]
    assert not up, "imports that run up the layers (core.LAYERS):\n" + "\n".join(up)


def test_core_subpackages_have_no_cycles():
    graph: dict[str, set[str]] = {}
    for src, dst in subpackage_edges():
        graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, "cycle between sub-packages: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_vnet_stage_runs_no_unet_code():
    """An edit to the U-Net (its model, inference or training) does not re-run the V-Net."""
    files = {str(f.relative_to(PKG)) for f in closure(stage_modules()["propose"])}
    unet = {"core/networks/models.py", "core/inference/predict.py", "core/engine/training.py"}
    assert not files & unet, f"`boneseg propose` runs {sorted(files & unet)}"
