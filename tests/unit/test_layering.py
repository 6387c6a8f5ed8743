"""The layering of the core, checked by machine: import-linter's contracts (pyproject.toml,
``[tool.importlinter]``), private names that stay in their module, and function-local
imports that say why they are function-local."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "include" / "framesift"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_LINES = 650  # a module over ~600 lines is a sign it holds two concerns


def lint_imports(include_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(include_dir)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def core_modules():
    for path in sorted(CORE.rglob("*.py")):
        yield ".".join(path.relative_to(CORE.parent).with_suffix("").parts), path


def test_import_contracts_are_kept():
    res = lint_imports(ROOT / "include")
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    ("module", "bad_import", "message"),
    [
        # a stage importing one further down the flow, hidden in a function
        (
            "ingest/registry.py",
            "def _bad():\n    from framesift.drift import signals  # noqa\n",
            "framesift.ingest is not allowed to import framesift.drift",
        ),
        ("selection/engine.py", "import airflow  # noqa\n", "framesift is not allowed to import airflow"),
        (
            "selection/spec.py",
            "def _bad():\n    from framesift.selection import engine  # noqa\n",
            "No cycles are allowed in framesift.selection",
        ),
    ],
)
def test_contracts_fail_on_a_bad_import(tmp_path, module, bad_import, message):
    copy = tmp_path / "include" / "framesift"
    shutil.copytree(CORE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / module).open("a") as fh:
        fh.write("\n\n" + bad_import)
    res = lint_imports(tmp_path / "include")
    assert res.returncode != 0, res.stdout
    assert message in res.stdout, res.stdout


def _framesift_modules_imported(tree: ast.Module) -> dict[str, str]:
    """Local name -> framesift module, for ``from framesift.x import y`` where y is a module."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("framesift"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if (CORE.parent / (target.replace(".", "/") + ".py")).exists():
                    names[alias.asname or alias.name] = target
    return names


def test_no_module_uses_another_modules_private_names():
    found = []
    for module, path in core_modules():
        tree = ast.parse(path.read_text())
        modules = _framesift_modules_imported(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("framesift"):
                found += [
                    f"{module}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and node.module != module
                ]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.attr.startswith("_")
            ):
                found.append(f"{module}: {node.value.id}.{node.attr}")
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_function_local_framesift_imports_say_why():
    """Only to keep a heavy import (PyAV, OpenCV, matplotlib, torch, ...) out of a light
    caller; the line says which."""
    found = []
    for module, path in core_modules():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and id(node) not in top
                and (node.module or "").startswith("framesift")
                and "#" not in lines[node.end_lineno - 1]
            ):
                found.append(f"{module}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not found, "function-local imports without a reason:\n" + "\n".join(found)


def test_modules_stay_small():
    big = [(m, n) for m, p in core_modules() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, f"modules over {MAX_LINES} lines (split them by concern): {big}"
