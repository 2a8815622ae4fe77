"""Re-locks every dependency into ``pylock.toml`` against PyPI, keeping the current pins.

    python ops/lock.py                    # after adding or removing a dependency in pyproject.toml
    python ops/lock.py --upgrade httpx    # let named packages move to the newest release allowed

pip resolves ``.[all]`` and every dependency group against PyPI, the index the images install from,
with the current lock's versions as constraints, so nothing moves that was not named. ``--isolated``
leaves out this machine's pip configuration (a local mirror, find-links), so the lock holds PyPI's
URLs and hashes and no path of the machine that wrote it. pip then resolves the project alone, each
extra and each dependency group the same way, and every package gets a PEP 751 marker naming the
extras and groups that need it (no marker: the project itself needs it). ``docker/deps.py`` reads
those markers to install one image's extras; ``pip install -r 'pylock.toml[api]'`` selects the same.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.pylock import Pylock
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
INDEX = "https://pypi.org/simple"
HEADER = "# Written by `python ops/lock.py` (pip lock against PyPI, current pins kept). Do not edit by hand.\n"


def pins(lock: Path, upgrade: set[str]) -> list[str]:
    """The lock's versions as constraints, less the packages allowed to move."""
    if not lock.exists():
        return []
    packages = tomllib.loads(lock.read_text())["packages"]
    return [f"{p['name']}=={p['version']}" for p in packages if "version" in p and p["name"] not in upgrade]


def pip_lock(targets: Sequence[str], constraints: Path) -> dict[str, Any]:
    """What ``pip lock`` resolves for ``targets`` (requirements and ``--group`` options), as parsed TOML."""
    cmd = [sys.executable, "-m", "pip", "lock", "--isolated", "-q", "--index-url", INDEX]
    cmd += [*targets, "-c", str(constraints), "-o", "-"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return tomllib.loads(out.stdout)


def locked_names(lock: Mapping[str, Any]) -> set[str]:
    """Names of the packages a lock installs from an index (not the project's own directory)."""
    return {p["name"] for p in lock["packages"] if "version" in p}


def markers(full: Mapping[str, Any], base: set[str], needs: Mapping[str, set[str]]) -> dict[str, str]:
    """One PEP 751 marker per package the project alone does not need, from what each selector needs.

    ``needs`` maps ``'api' in extras``-style terms to the names that selector resolved to.
    """
    out: dict[str, str] = {}
    for name in sorted(locked_names(full) - base):
        terms = [term for term, names in needs.items() if name in names]
        if not terms:
            raise SystemExit(f"{name} is locked but no extra or group needs it")
        out[name] = " or ".join(terms)
    return out


def _value(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)  # the escapes TOML's basic strings share with JSON
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    raise TypeError(f"no TOML form here for {value!r}")


def _table(path: str, table: Mapping[str, Any], out: list[str]) -> None:
    out += [f"{k} = {_value(v)}" for k, v in table.items() if not isinstance(v, dict) and _is_value(v)]
    for k, v in table.items():
        if isinstance(v, dict):
            out += ["", f"[{path}.{k}]" if path else f"[{k}]"]
            _table(f"{path}.{k}" if path else k, v, out)
        elif not _is_value(v):
            for item in v:
                out += ["", f"[[{path}.{k}]]" if path else f"[[{k}]]"]
                _table(f"{path}.{k}" if path else k, item, out)


def _is_value(value: object) -> bool:
    """Not an array of tables."""
    return not (isinstance(value, list) and any(isinstance(v, dict) for v in value))


def render(lock: Mapping[str, Any]) -> str:
    """The lock as TOML, in the layout pip writes (top-level keys, then one table per package)."""
    out: list[str] = []
    _table("", lock, out)
    return HEADER + "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrade", nargs="+", default=[], metavar="PACKAGE", help="let these move")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "pylock.toml")
    args = parser.parse_args(argv)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = sorted(project["project"].get("optional-dependencies", {}))
    groups = sorted(project.get("dependency-groups", {}))

    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(pins(args.output, {canonicalize_name(n) for n in args.upgrade})) + "\n")
        selectors = {
            "all": [".[" + ",".join(extras) + "]", *(f"--group={g}" for g in groups)],
            "base": ["."],
            **{f"'{e}' in extras": [f".[{e}]"] for e in extras},
            **{f"'{g}' in dependency_groups": [f"--group={g}"] for g in groups},
        }
        # Each resolution mostly waits on the index: run them side by side.
        with ThreadPoolExecutor(max_workers=4) as pool:
            locks = dict(zip(selectors, pool.map(lambda t: pip_lock(t, constraints), selectors.values()), strict=True))
    full = locks.pop("all")
    base = locked_names(locks.pop("base"))
    needs = {term: locked_names(resolved) for term, resolved in locks.items()}
    marked = markers(full, base, needs)
    environment = default_environment()
    lock: dict[str, Any] = {
        "lock-version": full["lock-version"],
        # pip locks for the interpreter and platform it runs on; the images match them.
        "environments": [
            f"sys_platform == '{environment['sys_platform']}' and platform_machine == "
            f"'{environment['platform_machine']}' and python_version == '{environment['python_version']}'"
        ],
        "extras": extras,
        "dependency-groups": groups,
        "default-groups": [],
        "created-by": full["created-by"],
        "packages": [
            {k: v for k, v in [*p.items(), ("marker", marked.get(p["name"]))] if v is not None}
            for p in full["packages"]
        ],
    }
    for package in lock["packages"]:
        for dist in [*package.get("wheels", []), package.get("sdist", {})]:
            if not str(dist.get("url", "https:")).startswith("https:"):
                raise SystemExit(f"{package['name']}: {dist['url']} is no index URL")

    text = render(lock)
    # Check the file the way an installer reads it: what each extra selects is what pip resolved.
    written = Pylock.from_dict(tomllib.loads(text))
    for term, names in needs.items():
        selector = term.split("'")[1]
        selected = written.select(extras={selector}, dependency_groups={selector})
        chosen = {str(p.name) for p, _ in selected if p.version is not None}
        if chosen != names | base:  # what the project needs has no marker: always selected
            raise SystemExit(f"{selector}: the lock selects {sorted(chosen ^ (names | base))} unlike pip's resolution")
    args.output.write_text(text)
    print(f"{args.output}: {len(lock['packages'])} packages, {len(marked)} behind an extra or a group")


if __name__ == "__main__":
    main()
