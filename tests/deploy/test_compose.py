"""docker-compose.yml ships no credential and publishes only the API (no Docker engine here: the
file is read as compose reads it, variables included)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SECRET_VARS = re.compile(r"PASSWORD|SECRET|BASIC_AUTH|TOKEN|_KEY\b")


def _text() -> str:
    return COMPOSE.read_text()


def test_no_secret_has_a_default() -> None:
    # ${VAR:-default} and ${VAR-default} would put a known password in every deployment.
    for var, op in re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(:?[-?][^}]*)?\}", _text()):
        if SECRET_VARS.search(var) and var != "FAKESCOPE_BOOTSTRAP_API_KEY":
            assert op.startswith(":?"), f"{var} must be required (${{{var}:?...}}), not {op!r}"
    for old in ("fakescope-dev-secret", "admin:fakescope-dev", "changethis", "minioadmin"):
        assert old not in _text()


def test_only_the_api_is_published() -> None:
    services = yaml.safe_load(_text())["services"]
    published = {}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            host = str(port).split(":")[0] if str(port).count(":") == 2 else "0.0.0.0"
            published.setdefault(name, []).append((host, str(port)))
    # The API on every interface; MinIO's S3 port on loopback only (presigned URLs on the host);
    # Flower, the MinIO console, Postgres and Redis not at all.
    assert set(published) == {"api", "minio"}
    assert all(host == "127.0.0.1" for host, _ in published["minio"])
    assert all(not p.endswith("9001") for _, p in published["minio"])


def test_gen_env_fills_every_required_variable() -> None:
    env = subprocess.run(["bash", str(ROOT / "ops" / "gen_env.sh")], capture_output=True, text=True, check=True)
    values = dict(line.split("=", 1) for line in env.stdout.splitlines())
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", _text()))
    assert required <= set(values)
    again = subprocess.run(["bash", str(ROOT / "ops" / "gen_env.sh")], capture_output=True, text=True, check=True)
    assert env.stdout != again.stdout  # random, not a default in disguise
    assert all(len(v) >= 32 for k, v in values.items() if "PASSWORD" in k or "SECRET" in k)
