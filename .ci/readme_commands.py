"""Prints one of the README's two set-up commands, as written: ``try`` (the scan) or ``test``.

`.ci/run` runs the ``try`` command from here, so CI runs what a newcomer reads; a test holds the
``test`` command to what `.ci/run` installs and runs.
"""

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
# The paragraph's bold lead-in, then the first indented (code) line after it.
LEADS = {"try": "**Try it**", "test": "**Run the tests**"}


def readme_command(which: str, text: str | None = None) -> str:
    text = README.read_text() if text is None else text
    start = text.index(LEADS[which])
    match = re.search(r"^    (\S.*)$", text[start:], flags=re.MULTILINE)
    if match is None:
        raise ValueError(f"no command under {LEADS[which]} in the README")
    return match.group(1).strip()


if __name__ == "__main__":
    print(readme_command(sys.argv[1]))
