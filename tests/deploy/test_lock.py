"""The images install the lock, all of their extras' part of it and nothing else (issue 25).

Each Dockerfile's ``RUN`` lines are read as the build runs them: every ``python deps.py ...`` is run
here against ``pylock.toml`` to get the file it writes, and every ``pip install`` is checked against
the lock, which is read independently of ``deps.py`` (``packaging.pylock``, as an installer reads it).
Each check returns its problems, and a mutated Dockerfile or lock shows that it can fail.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.pylock import Pylock
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "pylock.toml"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Each image, the extras it serves, and whether it takes torch's CPU build from PyTorch's index
# (which leaves out the CUDA runtime PyPI's torch pulls in).
IMAGES = {
    "Dockerfile.api": ({"api"}, False),
    "Dockerfile.worker-classify": ({"worker"}, True),
    "Dockerfile.worker-explain": ({"worker", "explain"}, False),
}
CUDA_RUNTIME = re.compile(r"nvidia-.+|cuda-.+|triton")
# Options of `pip install` that take a value.
VALUED = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-f", "--find-links"}


def _deps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docker_deps", ROOT / "docker" / "deps.py")
    assert spec is not None and spec.loader is not None
    deps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deps)
    return deps


@dataclass
class Install:
    """One `pip install` of a Dockerfile: its options and the requirement lines it installs."""

    options: list[str]
    lines: list[str] = field(default_factory=list)


def _commands(run: str) -> list[list[str]]:
    """A RUN line's simple commands, split where the shell would (``&&``, ``;``), quotes kept whole."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", ";", "||"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def installs(dockerfile: str, lock: Path = LOCK) -> list[Install]:
    """Every `pip install` in ``dockerfile`` (its text), with the lines of the files deps.py writes for it."""
    deps = _deps()
    written: dict[str, list[str]] = {}
    out = []
    runs = re.findall(r"^RUN\s+((?:.*\\\n)*.*)$", dockerfile, flags=re.MULTILINE)
    for run in runs:
        for words in _commands(run.replace("\\\n", " ")):
            command = shlex.join(words)
            if words[:2] == ["python", "deps.py"]:
                assert words[-2] == ">", f"deps.py's output goes to a file: {command}"
                stdout = io.StringIO()
                with contextlib.redirect_stdout(stdout):
                    deps.main([*words[2:-2], "--lock", str(lock)])
                written[words[-1]] = stdout.getvalue().split("\n")
            elif words[:2] == ["pip", "install"]:
                install = Install(options=[])
                rest = iter(words[2:])
                for word in rest:
                    if word in ("-r", "--requirement"):
                        install.lines += written.get(next(rest), ["(a file deps.py did not write)"])
                    elif word in VALUED:
                        install.options += [word, next(rest)]
                    elif word.startswith("-"):
                        install.options.append(word)
                    else:
                        install.lines.append(word)
                out.append(install)
    return out


def _locked() -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in tomllib.loads(LOCK.read_text())["packages"] if "version" in p}


def _selected(extras: set[str]) -> set[str]:
    """What an installer selects from the lock for ``extras`` (none of deps.py's code)."""
    lock = Pylock.from_dict(tomllib.loads(LOCK.read_text()))
    return {str(p.name) for p, _ in lock.select(extras=extras, dependency_groups=set()) if p.version is not None}


def _indexes(options: list[str]) -> list[str | None]:
    """The indexes a `pip install` reads (None: PyPI, the default)."""
    urls: list[str | None] = [
        options[i + 1] for i, o in enumerate(options[:-1]) if o in ("-i", "--index-url", "--extra-index-url")
    ]
    return urls if any(o in ("-i", "--index-url") for o in options) else [None, *urls]


def problems(name: str, dockerfile: str) -> list[str]:
    """Where image ``name`` installs other than exactly its extras' locked packages."""
    extras, cpu_torch = IMAGES[name]
    locked = _locked()
    found: list[str] = []
    installed: set[str] = set()
    for install in installs(dockerfile):
        if "--no-deps" not in install.options:
            found.append(f"pip install {install.options} resolves dependencies outside the lock: add --no-deps")
        for line in install.lines:
            if line in ("", "."):  # the project itself, from the copied source
                continue
            requirement, *hashes = line.split(" --hash=")
            pin = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", requirement.strip())
            if pin is None:
                found.append(f"{line!r} is not pinned to one version")
                continue
            package = canonicalize_name(pin.group(1))
            installed.add(package)
            if package not in locked:
                found.append(f"{package} is not in the lock")
                continue
            if pin.group(2) != locked[package]["version"]:
                found.append(f"{package}=={pin.group(2)}, the lock has {locked[package]['version']}")
            lock_hashes = {f"{a}:{h}" for w in locked[package].get("wheels", []) for a, h in w["hashes"].items()}
            if not set(hashes) <= lock_hashes:
                found.append(f"{package}: hashes the lock does not have")
            if not hashes and not (cpu_torch and package in ("torch", "torchvision")):
                found.append(f"{package} is installed without its locked hash")
            if not hashes and _indexes(install.options) != [CPU_INDEX]:
                found.append(f"{package} without a hash comes from elsewhere than {CPU_INDEX} alone")
            if hashes and "--require-hashes" not in install.options:
                found.append(f"{package}: pip install without --require-hashes")
    expected = _selected(extras)
    if cpu_torch:
        expected = {n for n in expected if not CUDA_RUNTIME.fullmatch(n)}
    if expected - installed:
        found.append(f"{name} leaves out locked packages of {sorted(extras)}: {sorted(expected - installed)}")
    if installed - expected:
        found.append(f"{name} installs packages its extras do not need: {sorted(installed - expected)}")
    return found


def _dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text()


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_each_image_installs_exactly_its_extras_locked_packages(name: str) -> None:
    assert problems(name, _dockerfile(name)) == []


def test_the_classify_image_leaves_out_only_the_cuda_runtime() -> None:
    selected = _selected({"worker"})
    assert {"torch", "torchvision", "nvidia-cublas", "triton"} <= selected  # PyPI's torch is the CUDA build
    lines = [line for i in installs(_dockerfile("Dockerfile.worker-classify")) for line in i.lines]
    assert "torch==2.14.1" in lines and not any(CUDA_RUNTIME.match(line) for line in lines)


@pytest.mark.parametrize(
    ("name", "edit", "complaint"),
    [
        ("Dockerfile.api", ("deps.py api >", "deps.py api worker >"), "do not need"),
        ("Dockerfile.api", ("install --no-deps", "install"), "add --no-deps"),
        ("Dockerfile.api", ("-r /tmp/requirements.txt", "-r /tmp/requirements.txt requests"), "not pinned"),
        ("Dockerfile.api", ("-r /tmp/requirements.txt", "-r /tmp/requirements.txt left-pad==1.0"), "not in the lock"),
        ("Dockerfile.api", ("-r /tmp/requirements.txt", "-r /tmp/requirements.txt uvicorn==0.1"), "the lock has"),
        ("Dockerfile.worker-explain", ("deps.py worker explain", "deps.py worker"), "leaves out"),
        ("Dockerfile.worker-explain", ("--require-hashes", ""), "without --require-hashes"),
        ("Dockerfile.worker-classify", (f"--index-url {CPU_INDEX}", f"--extra-index-url {CPU_INDEX}"), "elsewhere"),
    ],
)
def test_an_install_outside_the_lock_is_caught(name: str, edit: tuple[str, str], complaint: str) -> None:
    text = _dockerfile(name)
    assert edit[0] in text
    assert any(complaint in p for p in problems(name, text.replace(edit[0], edit[1], 1)))


def test_deps_py_follows_the_lock_when_it_changes(tmp_path: Path) -> None:
    # A lock whose markers put uvicorn in no extra: deps.py's api list loses it, and the check says so.
    text = LOCK.read_text()
    uvicorn = text.index('name = "uvicorn"')
    marker = text.index("marker = ", uvicorn)
    changed = text[:marker] + "marker = \"'explain' in extras\"" + text[text.index("\n", marker) :]
    (tmp_path / "pylock.toml").write_text(changed)
    lines = [line for i in installs(_dockerfile("Dockerfile.api"), tmp_path / "pylock.toml") for line in i.lines]
    assert not any(line.startswith("uvicorn==") for line in lines)
    assert any(line.startswith("fastapi==") for line in lines)


def test_the_lock_names_no_machine_path_and_is_a_valid_pylock() -> None:
    text = LOCK.read_text()
    assert "file:" not in text
    assert not re.search(r"(?<![\w.])/(opt|home|root|tmp|work|usr|var|Users)/", text)
    data = tomllib.loads(text)
    Pylock.from_dict(data)  # raises on anything PEP 751 does not allow
    urls = [w["url"] for p in data["packages"] for w in p.get("wheels", [])]
    assert urls and all(u.startswith("https://files.pythonhosted.org/") for u in urls)
    assert [p for p in data["packages"] if "version" not in p] == [{"name": "fakescope", "directory": {"path": "."}}], (
        "the project is the one entry installed from its source"
    )


def test_every_dependency_pyproject_names_is_locked_for_its_extra() -> None:
    # A dependency added or narrowed in pyproject.toml without `python ops/lock.py` fails here.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    locked = _locked()
    lock = tomllib.loads(LOCK.read_text())
    assert sorted(project["project"]["optional-dependencies"]) == lock["extras"]
    assert sorted(project["dependency-groups"]) == lock["dependency-groups"]
    wanted = {None: project["project"]["dependencies"], **project["project"]["optional-dependencies"]}
    for extra, requirements in wanted.items():
        selected = _selected(set() if extra is None else {extra})
        for text in requirements:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            if name == "fakescope":
                continue
            assert name in selected, f"{text} ({extra or 'the project'}) is not locked: run python ops/lock.py"
            assert requirement.specifier.contains(locked[name]["version"]), f"{text}: the lock has another version"
