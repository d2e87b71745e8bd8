"""The layers: the core (quantserve/) imports no stage and no orchestration; a stage imports the core, never another
stage nor the orchestration (issue 11); only app/ (the CLI, the run pipeline, the benchmarks) sits on top."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.cli import REPO

STAGES = {"quantize": "quantserve.quantize", "serve": "quantserve.serve", "eval": "quantserve.eval"}
APP = "quantserve.app"


def _imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from quantserve import eval` names a stage as an attribute, not in `module`
            found.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
    return found


def test_no_stage_imports_another_stage():
    crossings = []
    for folder, own in STAGES.items():
        others = [pkg for pkg in STAGES.values() if pkg != own]
        for path in sorted((REPO / folder).rglob("*.py")):
            for module in sorted(_imported_modules(path)):
                if any(module == pkg or module.startswith(pkg + ".") for pkg in others):
                    crossings.append(f"{path.relative_to(REPO)} imports {module}")
    assert crossings == []


def _crossings(paths: list[Path], forbidden: list[str]) -> list[str]:
    return [f"{path.relative_to(REPO)} imports {module}"
            for path in paths for module in sorted(_imported_modules(path))
            if any(module == pkg or module.startswith(pkg + ".") for pkg in forbidden)]


def test_the_core_imports_no_stage_and_no_orchestration():
    core = sorted((REPO / "quantserve").glob("*.py"))
    assert len(core) > 10  # the core's modules sit in quantserve/ itself: a moved folder would pass this silently
    assert _crossings(core, [*STAGES.values(), APP]) == []


def test_no_stage_imports_the_orchestration():
    stage_files = [path for folder in STAGES for path in sorted((REPO / folder).rglob("*.py"))]
    assert _crossings(stage_files, [APP]) == []


def test_benchmarks_live_beside_each_other_outside_the_stages():
    stray = [path.relative_to(REPO).as_posix() for folder in ["quantserve", *STAGES]
             for path in (REPO / folder).rglob("*bench*.py")]
    assert stray == []
    assert {p.stem for p in (REPO / "app" / "bench").glob("*.py")} >= {"overhead", "soak", "stub", "quantize", "serve"}
