"""Every command README.md names works: each ``make`` target exists, each ``python -m <module>`` composes or runs.

The commands come from the README itself (code blocks and inline code), so a command added there is covered
here without a change to this file. A Hydra entry point (a module with ``@hydra.main``) composes its
configuration with the README's overrides (``--cfg job``: composing needs no GPU, hub or long run; a sweep
composes its first job); a README command whose placeholders (``<manifest>``) this file can fill with real
files and that runs offline in seconds is run for real; every other module prints its ``--help``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from hydra.core.override_parser.overrides_parser import OverridesParser

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # each command; an idle 2-core machine answers every one within 15 s
WORKERS = 2  # the machine's cores: --help and composing are mostly imports
PLACEHOLDER = re.compile(r"<[^<>]*>")
PYTHON_M = re.compile(r"python -m ((?:broadclass|benchmarks)(?:\.\w+)+)(.*)")
MAKE = re.compile(r"(?:^|&&|;)\s*make\s+([A-Za-z0-9][\w.-]*)")


@dataclass(frozen=True)
class Command:
    module: str
    arguments: tuple[str, ...]  # as the README writes them, placeholders included

    def __str__(self) -> str:
        return " ".join(["python -m", self.module, *self.arguments])


def readme_code(text: str) -> list[str]:
    """Every line of every fenced code block (``\\`` continuations joined; a line that quotes code in backticks,
    as the layout's notes do, gives its quotes instead) and every inline code span."""
    fence = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
    quoted = re.compile(r"`([^`]+)`")
    code = []
    for line in (line for block in fence.findall(text) for line in block.replace("\\\n", " ").splitlines()):
        code += quoted.findall(line) if "`" in line else [line]
    return code + [" ".join(span.split()) for span in quoted.findall(fence.sub("", text))]


def make_targets(text: str) -> list[str]:
    """The targets of every ``make <target>`` in the README's code, in order, once each."""
    return list(dict.fromkeys(target for code in readme_code(text) for target in MAKE.findall(code)))


def python_commands(text: str) -> list[Command]:
    """Every ``python -m broadclass.…`` (and ``benchmarks.…``) command in the README's code, once each."""
    commands = []
    for code in readme_code(text):
        for match in PYTHON_M.finditer(code):
            rest = re.split(r"\s(?:&&|;)\s", match.group(2))[0]
            # A placeholder is one argument even with spaces inside (<a | b>); a comment ends the command.
            rest = PLACEHOLDER.sub(lambda m: m.group(0).replace(" ", "\0"), rest)
            try:
                tokens = shlex.split(rest, comments=True)
            except ValueError:  # an unbalanced quote in prose
                tokens = rest.split()
            commands.append(Command(match.group(1), tuple(token.replace("\0", " ") for token in tokens)))
    return list(dict.fromkeys(commands))


def module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__main__.py") if p.is_file()), None)


def is_hydra_entry_point(path: Path) -> bool:
    return "@hydra.main" in path.read_text(encoding="utf-8")


def hydra_overrides(command: Command) -> list[str]:
    """The README's overrides that compose offline: no placeholders, no flags; a sweep's first value."""
    parser = OverridesParser.create()
    overrides = []
    for token in command.arguments:
        if token.startswith("-") or "=" not in token or PLACEHOLDER.search(token) or "…" in token:
            continue
        override = parser.parse_override(token)
        if override.is_sweep_override():
            token = f"{override.get_key_element()}={next(override.sweep_string_iterator())}"
        overrides.append(token)
    return overrides


def missing_make_targets(targets: list[str]) -> list[str]:
    """The targets ``make -n`` refuses with the project's Makefile (nothing is run)."""
    problems = []
    for target in targets:
        result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            problems.append(f"make {target}: {result.stderr.strip()}")
    return problems


# ---- what the README's placeholders stand for, where a command can run for real ------------------------------------
def noise(path: Path, seconds: float = 1.0, rate: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(int(rate * seconds))).astype(np.float32), rate)
    return path


def a_manifest(root: Path) -> str:
    """A clean one-row manifest in the default config's (the demo's) categories."""
    path = root / "manifest.jsonl"
    audio = noise(root / "audio" / "one.wav")
    row = f'{{"id": "one", "audio_filepath": "{audio}", "duration": 1.0, "phones": "k æ t", "category": "male"}}'
    path.write_text(row + "\n", encoding="utf-8")
    return str(path)


def a_folder_of_audio(root: Path) -> str:
    noise(root / "recordings" / "a.wav")
    noise(root / "recordings" / "day2" / "b.wav", 0.5)
    return str(root / "recordings")


# Placeholder → a real file it can stand for. Modules that run offline in seconds: their README commands whose
# every placeholder is in here run for real.
PLACEHOLDER_FILES: dict[str, Callable[[Path], str]] = {
    "<manifest>": a_manifest,
    "<folder of audio files>": a_folder_of_audio,
    "<dir>": lambda root: str(root / "out"),
}
RUN_FOR_REAL = {"broadclass.check", "broadclass.prepare"}


def real_arguments(command: Command, root: Path) -> list[str] | None:
    """The command's arguments with its placeholders filled, or None when it cannot run for real here."""
    found = {p for token in command.arguments for p in PLACEHOLDER.findall(token)}
    if command.module not in RUN_FOR_REAL or not found or not found <= set(PLACEHOLDER_FILES):
        return None
    filled = {p: PLACEHOLDER_FILES[p](root) for p in found}
    arguments = [token for token in command.arguments if token not in ("…", "...")]
    return [PLACEHOLDER.sub(lambda m: filled[m.group(0)], token) for token in arguments]


def invocation(command: Command, root: Path) -> tuple[list[str], str] | str:
    """How to try the command (arguments, what is tried), or a problem when its module does not exist."""
    path = module_file(command.module)
    if path is None:
        return f"{command}: no module {command.module} in {ROOT}"
    real = real_arguments(command, root)
    if real is not None:
        return real, "run"
    if is_hydra_entry_point(path):
        return [*hydra_overrides(command), "--cfg", "job"], "compose"
    return ["--help"], "help"


def run(module: str, arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BROADCLASS_ROOT": str(cwd), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def command_problems(commands: list[Command], root: Path) -> list[str]:
    """A line for every command that does not work as the README says, all tried (two at a time)."""
    problems, jobs = [], {}
    for index, command in enumerate(commands):
        work = root / f"command{index}"
        work.mkdir()
        tried = invocation(command, work)
        if isinstance(tried, str):
            problems.append(tried)
            continue
        arguments, how = tried
        # --help and composing say the same for every command of a module with the same arguments.
        jobs.setdefault((command.module, tuple(arguments) if how != "help" else ()), (command, how, work))

    def attempt(key: tuple[str, tuple[str, ...]]) -> str | None:
        module, arguments = key
        command, how, work = jobs[key]
        try:
            result = run(module, list(arguments) or ["--help"], work)
        except subprocess.TimeoutExpired:
            return f"{command} ({how}: {' '.join(arguments) or '--help'}): no answer within {TIMEOUT_S} s"
        if result.returncode == 0:
            return None
        tail = "\n    ".join((result.stdout + result.stderr).strip().splitlines()[-8:])
        return f"{command} ({how}: {' '.join(arguments) or '--help'}): exit {result.returncode}\n    {tail}"

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        problems += [p for p in pool.map(attempt, jobs) if p is not None]
    return problems


# ---- the tests ------------------------------------------------------------------------------------------------------
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_make_target_the_readme_names_exists():
    targets = make_targets(README)
    assert {"demo", "test", "install", "demo-accent", "ui", "lint"} <= set(targets)  # the parser sees them
    assert missing_make_targets(targets) == []


def test_every_python_command_the_readme_names_composes_runs_or_prints_its_help(tmp_path):
    commands = python_commands(README)
    modules = {command.module for command in commands}
    assert {"broadclass.train", "broadclass.prepare", "broadclass.check", "broadclass.predict"} <= modules
    how = {str(c): invocation(c, tmp_path / "probe")[1] for c in commands if module_file(c.module)}
    assert "compose" in how.values() and "run" in how.values() and "help" in how.values()
    assert command_problems(commands, tmp_path) == []


SNIPPET = """
```bash
make demo   # fine
make no-such-target
python -m broadclass.no_such_module key=1
python -m broadclass.train -m +experiment=demo \\
    model.lr=1e-3,2e-3 data.train_manifest=<train.jsonl>   # a sweep
```
Inline: `make lint`, `python -m broadclass.report compare=<run A> <run B>` and
`python -m broadclass.check <manifest> …`; `make` alone names no target.
"""


def test_the_parser_finds_every_command_and_the_checks_fail_on_ones_that_do_not_exist(tmp_path):
    assert make_targets(SNIPPET) == ["demo", "no-such-target", "lint"]
    commands = python_commands(SNIPPET)
    assert commands == [
        Command("broadclass.no_such_module", ("key=1",)),
        Command(
            "broadclass.train", ("-m", "+experiment=demo", "model.lr=1e-3,2e-3", "data.train_manifest=<train.jsonl>")
        ),
        Command("broadclass.report", ("compare=<run A>", "<run B>")),
        Command("broadclass.check", ("<manifest>", "…")),
    ]
    assert missing_make_targets(["demo", "lint"]) == []
    (problem,) = missing_make_targets(["no-such-target"])
    assert problem.startswith("make no-such-target: ") and "No rule to make target" in problem
    # A module that does not exist fails without a subprocess; the others are tried the way the test tries them.
    no_module = f"{commands[0]}: no module broadclass.no_such_module in {ROOT}"
    assert invocation(commands[0], tmp_path) == no_module
    assert invocation(commands[1], tmp_path) == (["+experiment=demo", "model.lr=0.001", "--cfg", "job"], "compose")
    assert invocation(commands[2], tmp_path) == (["--help"], "help")
    arguments, how = invocation(commands[3], tmp_path)
    assert how == "run" and arguments == [str(tmp_path / "manifest.jsonl")]
    assert command_problems([commands[0]], tmp_path) == [no_module]
