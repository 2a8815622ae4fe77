"""The README's two set-up commands and what CI runs cannot drift apart."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CI = (ROOT / ".ci" / "run").read_text()


def readme_command(which: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "readme_commands.py"), which], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def _pip_installs(command: str) -> list[list[str]]:
    """The arguments of every ``pip install`` in a shell line, without -q, -U or constraints."""
    installs = []
    for part in re.split(r"&&|\n", command):
        if "pip install" not in part or part.lstrip().startswith("#"):
            continue
        words = shlex.split(part)
        if len(words) > 2 and words[0].endswith("/pip") and words[1] == "install":
            args, skip = [], False
            for w in words[2:]:
                if skip:
                    skip = False
                elif w in ("-c", "--constraint"):
                    skip = True
                elif w not in ("-q", "-U", "--upgrade"):
                    args.append(w)
            installs.append(args)
    return installs


def test_ci_installs_and_runs_what_the_readme_test_command_does() -> None:
    readme = readme_command("test")
    wanted = [a for a in _pip_installs(readme) if not any(w.startswith("pip") for w in a)]
    ci = [a for a in _pip_installs(CI) if not any(w.startswith("pip") for w in a)]
    assert wanted == [["-e", ".[all]", "--group", "dev"]]
    assert wanted[0] in ci
    pytest_call = readme.split("&&")[-1].strip()
    assert pytest_call == ".venv/bin/python -m pytest"
    assert re.search(rf"^{re.escape(pytest_call)}$", CI, flags=re.MULTILINE)


def test_ci_runs_the_readme_first_command_as_written() -> None:
    command = readme_command("try")
    # The command CI runs is read from the README at run time, not copied into .ci/run.
    assert "TRY=$(python3 .ci/readme_commands.py try)" in CI
    assert 'bash -c "$TRY"' in CI
    # It installs only the extras it names, and it is the scan whose outputs CI checks.
    assert _pip_installs(command) == [["-e", ".[ml]"]]
    assert "fakescope scan" in command and "--out scan-out" in command
    for name in ("results.jsonl", "task1.json", "report.html"):
        assert name in CI
