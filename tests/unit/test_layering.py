"""Data flows one way; shared ground imports no stage; no stage imports the CLI or orchestrator."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ("jobs", "feature_repo", "training", "scoring")


def _imports(path: Path) -> set[str]:
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods.add(node.module)
    return mods


def _top(mod: str) -> str:
    return mod.split(".")[0]


def test_shared_ground_imports_no_stage_and_no_cli() -> None:
    for path in (REPO / "encore" / "core").rglob("*.py"):
        bad = {m for m in _imports(path) if _top(m) in STAGES or m.startswith("encore.cli")}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


@pytest.mark.parametrize("stage", STAGES)
def test_stages_import_neither_cli_nor_orchestrator(stage: str) -> None:
    for path in (REPO / stage).rglob("*.py"):
        bad = {m for m in _imports(path) if m.startswith(("encore.cli", "encore.nightly"))}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_scoring_never_imports_training_and_earlier_stages_never_import_later_ones() -> None:
    for path in (REPO / "scoring").rglob("*.py"):
        assert not {m for m in _imports(path) if _top(m) == "training"}, path
    for path in (REPO / "jobs").rglob("*.py"):
        assert not {m for m in _imports(path) if _top(m) in ("feature_repo", "training", "scoring")}, path
    for path in (REPO / "feature_repo").rglob("*.py"):
        assert not {m for m in _imports(path) if _top(m) in ("training", "scoring")}, path


def test_no_python_package_named_mlflow_shadows_the_library() -> None:
    assert not (REPO / "mlflow" / "__init__.py").exists()
    assert not list((REPO / "mlflow").glob("*.py"))
