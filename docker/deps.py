"""Prints the requirements of pyproject.toml's extras, one a line, for ``pip install -r``.

    python deps.py api > requirements.txt

The images install these before copying the source, so an edit to the code rebuilds only the last
layer, not the one holding torch. ``fakescope[...]`` references between extras are expanded.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"no extra {extra!r} in {pyproject}")
        seen.add(extra)
        for req in optional[extra]:
            own = re.fullmatch(r"fakescope\[([^\]]+)\]", req.replace(" ", ""))
            if own:
                todo += own.group(1).split(",")
            elif req not in out:
                out.append(req)
    return out


if __name__ == "__main__":
    print("\n".join(requirements(Path("pyproject.toml"), sys.argv[1:])))
