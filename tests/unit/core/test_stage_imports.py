"""A stage imports the core, never another stage: what two stages share lives in quantserve/ (issue 11)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

STAGES = {"quantize": "quantserve.quantize", "serve": "quantserve.serve", "eval": "quantserve.eval"}


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
