"""The job service's test stack (see tests/service/stackfixtures.py), shared by the whole session."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from stackfixtures import service_env, service_stack  # noqa: F401
