"""Prints the locked packages an image's extras need, one a line, for ``pip install --no-deps -r``.

    python deps.py api > requirements.txt                      # name==version --hash=sha256:...
    python deps.py worker --cpu-torch > requirements.txt       # the same, less torch and CUDA
    python deps.py worker --cpu-torch --torch > torch.txt      # torch's pins, for the CPU index

It reads ``pylock.toml`` (written by ``python ops/lock.py``), whose PEP 751 markers say which extras
need each package, so an image gets exactly the locked versions and hashes of its extras and nothing
is resolved at build time. The images install these before copying the source, so an edit to the code
rebuilds only the last layer, not the one holding torch. Only the standard library: it runs in the
bare image before anything is installed.

The lock holds PyPI's torch, the CUDA build. ``--cpu-torch`` is for an image that takes torch's CPU
build from PyTorch's own index instead: that build needs none of the CUDA runtime (``nvidia-*``,
``cuda-*``, ``triton``), which is left out, and its wheels (``2.14.1+cpu``) carry hashes the lock
does not have, so torch and torchvision print apart (``--torch``), pinned to the lock's versions.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TORCH = frozenset({"torch", "torchvision"})
# What torch's CUDA build alone pulls in (its Linux-only requirements and theirs).
CUDA_RUNTIME = re.compile(r"nvidia-.+|cuda-.+|triton")
# ops/lock.py writes markers of this form only: the extras and groups that need the package.
_TERM = re.compile(r"'([a-z0-9-]+)' in (extras|dependency_groups)")


def _selected(marker: str | None, extras: set[str], groups: set[str]) -> bool:
    if marker is None:
        return True
    chosen = False
    for term in marker.split(" or "):
        match = _TERM.fullmatch(term.strip())
        if match is None:
            raise SystemExit(f"deps.py reads only extra and group markers, not {marker!r}")
        chosen |= match.group(1) in (extras if match.group(2) == "extras" else groups)
    return chosen


def locked(lock: Path, extras: Sequence[str], groups: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The lock's packages that ``extras`` and ``groups`` select, less the project itself."""
    data = tomllib.loads(lock.read_text())
    unknown = sorted(set(extras) - set(data.get("extras", [])))
    if unknown:
        raise SystemExit(f"{lock} locks no extra {unknown}")
    return [
        p
        for p in data["packages"]
        if "version" in p and _selected(p.get("marker"), set(extras), set(groups))  # no version: the project
    ]


def requirements(lock: Path, extras: Sequence[str], *, cpu_torch: bool = False, torch: bool = False) -> list[str]:
    """``name==version --hash=...`` lines for the packages ``extras`` need (see the module's docstring)."""
    out = []
    for package in locked(lock, extras):
        name = package["name"]
        if cpu_torch and (CUDA_RUNTIME.fullmatch(name) or (name in TORCH) != torch):
            continue
        hashes = [] if torch else [h for d in package.get("wheels", []) for h in d["hashes"].items()]
        hashes += [] if torch or "sdist" not in package else list(package["sdist"]["hashes"].items())
        out.append(" ".join([f"{name}=={package['version']}", *(f"--hash={a}:{h}" for a, h in hashes)]))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("extras", nargs="+")
    parser.add_argument("--lock", type=Path, default=Path("pylock.toml"))
    parser.add_argument("--cpu-torch", action="store_true", help="leave torch and the CUDA runtime out")
    parser.add_argument("--torch", action="store_true", help="with --cpu-torch: torch's pins only, no hashes")
    args = parser.parse_args(argv)
    if args.torch and not args.cpu_torch:
        parser.error("--torch goes with --cpu-torch")
    print("\n".join(requirements(args.lock, args.extras, cpu_torch=args.cpu_torch, torch=args.torch)))


if __name__ == "__main__":
    main()
