"""The tests' own layout: a test module imports shared helpers from tests/helpers/ and fixtures come from
conftest.py; no module of the tests imports a test module or conftest.py, by an import (lazy ones too) or by a
dotted name in a string (a Hydra ``_target_``), except a test module naming itself."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root.parent).with_suffix("").parts)


def cross_references(root: Path) -> list[str]:
    """``file:line: what it refers to`` for each import of, or dotted string naming, another test module or
    conftest.py in the tests under ``root`` (the package ``root.name``)."""
    # tests.test_x or tests.conftest: a module of the tests that is not a helper.
    not_a_helper = re.compile(rf"\b{root.name}\.(test_\w+|conftest)\b")
    problems = []
    for path in sorted(root.rglob("*.py")):
        own = module_name(path, root)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [match.group(0) for match in not_a_helper.finditer(node.value)]
            else:
                continue
            for name in names:
                match = not_a_helper.match(name)
                if match and match.group(0) != own:
                    problems.append(f"{path.relative_to(root.parent)}:{node.lineno}: {own} refers to {match.group(0)}")
    return problems


def test_no_module_of_the_tests_imports_a_test_module_or_conftest():
    assert cross_references(TESTS) == []


def test_the_check_sees_imports_lazy_imports_and_targets_of_other_test_modules(tmp_path):
    # A package of its own name, so that these examples are not references of this module.
    fake = tmp_path / "suite"
    (fake / "helpers").mkdir(parents=True)
    (fake / "test_a.py").write_text(
        "from suite.test_b import helper\n"
        "def test_x():\n"
        "    from suite.conftest import CONF_DIR\n"
        "    return ['+callbacks.x._target_=suite.test_b.Recorder', 'suite.test_a.Mine']\n"
    )
    (fake / "helpers" / "runs.py").write_text("import suite.test_a\nfrom suite.helpers.config import X\n")
    assert cross_references(fake) == [
        "suite/helpers/runs.py:1: suite.helpers.runs refers to suite.test_a",
        "suite/test_a.py:1: suite.test_a refers to suite.test_b",
        "suite/test_a.py:3: suite.test_a refers to suite.conftest",
        "suite/test_a.py:4: suite.test_a refers to suite.test_b",
    ]
