"""The package's layers import one way: entry points -> tracking -> training -> model -> metrics -> data, and no
modules import each other, also within a layer.

Every import of a broadclass module inside broadclass/ counts, a lazy one inside a function too: a lazy import
hides a dependency from the reader, it does not remove it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "broadclass"
# Lowest first. A module may import its own layer and the layers below it. Modules directly in broadclass/
# are the entry points: the top. config.py (resolvers and config checks, imported with the package) is the
# foundation below every layer: it imports none of them.
LAYERS = ["data", "metrics", "model", "training", "tracking"]
ENTRY = len(LAYERS)
FOUNDATION = -1


def layer_of(module: str) -> int:
    if module == "broadclass.config":
        return FOUNDATION
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    if len(parts) == 2 and parts[1] in LAYERS:  # the package itself (its __init__)
        return LAYERS.index(parts[1])
    return ENTRY


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("broadclass")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("broadclass"):
            found.append((node.lineno, node.module))
    return found


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for line, imported in imported_modules(path):
            if layer_of(imported) > layer_of(importer):
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} imports {imported}")
    return problems


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports() == []


def test_the_check_sees_the_foundation_importing_a_layer(tmp_path, monkeypatch):
    fake = tmp_path / "broadclass"
    fake.mkdir()
    (fake / "config.py").write_text("def f():\n    from broadclass.training.resume import run_dir\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert upward_imports() == ["broadclass/config.py:2: broadclass.config imports broadclass.training.resume"]


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # The same walk over a package with one data module that imports tracking.
    fake = tmp_path / "broadclass"
    (fake / "data").mkdir(parents=True)
    (fake / "data" / "reader.py").write_text("def f():\n    from broadclass.tracking.store import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert upward_imports() == ["broadclass/data/reader.py:2: broadclass.data.reader imports broadclass.tracking.store"]


def import_graph() -> dict[str, set[str]]:
    """Each broadclass module and the broadclass modules it imports (``from broadclass.a import b`` counts as an
    import of ``broadclass.a.b`` where that is a module, else of ``broadclass.a``)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py") if "conf" not in path.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("broadclass"):
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    edges.add(submodule if submodule in modules else node.module)
        edges.discard(name)
    return graph


def import_cycles() -> list[list[str]]:
    """Every set of modules that import each other, directly or through others (Tarjan's strongly connected
    components of more than one module), each sorted."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(cycles)


def test_no_modules_import_each_other_also_within_a_layer():
    assert import_cycles() == []


def test_the_check_sees_a_cycle_within_a_layer_through_a_third_module(tmp_path, monkeypatch):
    fake = tmp_path / "broadclass"
    (fake / "model").mkdir(parents=True)
    (fake / "model" / "__init__.py").write_text("")
    (fake / "model" / "a.py").write_text("from broadclass.model import b\n")
    (fake / "model" / "b.py").write_text("def f():\n    from broadclass.model.c import g\n")
    (fake / "model" / "c.py").write_text("import broadclass.model.a\n")
    (fake / "model" / "d.py").write_text("from broadclass.model.a import x\n")  # imports the cycle, is not in it
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert import_cycles() == [["broadclass.model.a", "broadclass.model.b", "broadclass.model.c"]]


def _readme_layout() -> dict[str, set[str]]:
    """The modules README.md's Layout section lists, by folder ('' for the package's own top level)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```\nbroadclass/\n", 1)[1].split("```", 1)[0]
    listed: dict[str, set[str]] = {}
    folder = ""
    for line in block.splitlines():
        entry = re.match(r"^( +)(\S+)", line)
        if not entry:
            continue
        indent, name = len(entry.group(1)), entry.group(2)
        if indent == 2:
            folder = name.rstrip("/") if name.endswith("/") else ""
            if name.endswith(".py"):
                listed.setdefault("", set()).add(name)
        elif indent == 4 and name.endswith(".py"):
            listed.setdefault(folder, set()).add(name)
    return listed


def test_the_readme_layout_lists_every_module_where_it_is_and_no_other():
    on_disk: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py" or "conf" in path.relative_to(PACKAGE).parts:
            continue
        folder = path.parent.relative_to(PACKAGE).as_posix()
        on_disk.setdefault("" if folder == "." else folder, set()).add(path.name)
    assert _readme_layout() == on_disk


# ---- commands: all in the entry layer, each a console script ---------------------------------------------------------
def _defines_main(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def _runs_as_main(tree: ast.Module) -> bool:
    """``if __name__ == "__main__":`` at the module's top level."""
    return any(
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
        for node in tree.body
    )


def command_problems(scripts: dict[str, str]) -> list[str]:
    """A line for each command outside the entry layer, each entry module with a ``main`` that is no console script
    or cannot run as ``python -m``, and each console script that is not ``broadclass-<module>`` naming such a main."""
    problems = []
    commands = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if layer_of(module) != ENTRY:
            if _runs_as_main(tree):
                problems.append(f"{module}: a command below the entry points (move it to broadclass/)")
            continue
        if _defines_main(tree):
            commands.add(module)
            if not _runs_as_main(tree):
                problems.append(f"{module}: has a main but does not run as python -m {module}")
    listed = {}
    for script, target in scripts.items():
        module, _, function = target.partition(":")
        listed[module] = script
        expected = "broadclass-" + module.removeprefix("broadclass.").replace("_", "-")
        if module not in commands or function != "main" or script != expected:
            problems.append(f"[project.scripts] {script} = {target!r}: expected {expected} = '{module}:main'")
    problems += [f"{module}: a command missing from [project.scripts]" for module in sorted(commands - set(listed))]
    return problems


def project_scripts() -> dict[str, str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's own TOML reader
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


def test_every_command_is_an_entry_point_listed_as_a_console_script():
    scripts = project_scripts()
    assert command_problems(scripts) == []
    assert {"broadclass-train", "broadclass-predict", "broadclass-check", "broadclass-ui"} <= set(scripts)


# Each console script as pip writes it (``from M import main; sys.exit(main())``), asked for its --help, all in one
# process started outside the repository: a Hydra command must find its config as the package broadclass.conf.
SCRIPTS_HELP = """
import contextlib, importlib, io, json, sys

answers = {}
for script, target in json.loads(sys.argv[1]).items():
    module, function = target.split(":")
    sys.argv = [script, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            status = getattr(importlib.import_module(module), function)()
        except SystemExit as exit_:
            status = exit_.code
    answers[script] = [status or 0, out.getvalue()]
print(json.dumps(answers))
"""


def test_every_console_script_runs_as_pip_installs_it_and_prints_its_help(tmp_path):
    scripts = project_scripts()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPTS_HELP, json.dumps(scripts)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.splitlines()[-1])
    assert set(answers) == set(scripts)
    for script, (status, text) in answers.items():
        module = scripts[script].split(":")[0]
        assert status == 0, f"{script}: exit {status}\n{text[-2000:]}"
        if module in ("broadclass.train", "broadclass.pretrain"):  # Hydra's help, with the composed config
            assert "powered by Hydra" in text and "== Config ==" in text and "_target_: broadclass." in text, script
        else:
            assert text.startswith(f"usage: python -m {module} "), f"{script}: {text[:200]}"


def test_the_check_sees_misplaced_and_unlisted_commands(tmp_path, monkeypatch):
    fake = tmp_path / "broadclass"
    (fake / "data").mkdir(parents=True)
    main = 'def main():\n    pass\n\n\nif __name__ == "__main__":\n    main()\n'
    (fake / "data" / "build.py").write_text(main)  # a command in a library layer
    (fake / "listed.py").write_text(main)
    (fake / "unlisted.py").write_text(main)
    (fake / "no_guard.py").write_text("def main():\n    pass\n")  # a main that python -m would not run
    (fake / "library.py").write_text("def helper():\n    pass\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    scripts = {
        "broadclass-listed": "broadclass.listed:main",
        "broadclass-no-guard": "broadclass.no_guard:main",
        "broadclass-library": "broadclass.library:main",  # no main there
        "listed": "broadclass.listed:main",  # not named broadclass-<module>
    }
    assert command_problems(scripts) == [
        "broadclass.data.build: a command below the entry points (move it to broadclass/)",
        "broadclass.no_guard: has a main but does not run as python -m broadclass.no_guard",
        "[project.scripts] broadclass-library = 'broadclass.library:main': expected broadclass-library = "
        "'broadclass.library:main'",
        "[project.scripts] listed = 'broadclass.listed:main': expected broadclass-listed = 'broadclass.listed:main'",
        "broadclass.unlisted: a command missing from [project.scripts]",
    ]
