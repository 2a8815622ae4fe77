"""docker-compose.yml ships no credential and publishes only the API (no Docker engine here: the
file is read as compose reads it, variables included)."""

from __future__ import annotations

import importlib.util
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
    published: dict[str, list[tuple[str, str]]] = {}
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


def _dockerfile(name: str) -> list[str]:
    return [line.strip() for line in (ROOT / "docker" / name).read_text().splitlines() if line.strip()]


def test_images_install_dependencies_before_the_code_and_the_api_ships_no_worker() -> None:
    spec = importlib.util.spec_from_file_location("docker_deps", ROOT / "docker" / "deps.py")
    assert spec is not None and spec.loader is not None
    deps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deps)
    requirements = deps.requirements
    api = requirements(ROOT / "pylock.toml", ["api"])
    worker = requirements(ROOT / "pylock.toml", ["worker"])
    assert not any(r.startswith("torch") for r in api) and any(r.startswith("fastapi==") for r in api)
    assert any(r.startswith("torch==2.14.1 ") for r in worker) and any(r.startswith("flower==") for r in worker)
    assert not any("fakescope" in r for r in worker)
    for name in ("Dockerfile.api", "Dockerfile.worker-classify", "Dockerfile.worker-explain"):
        lines = _dockerfile(name)
        install = next(
            i for i, line in enumerate(lines) if "pip install" in line and "-r /tmp/requirements.txt" in line
        )
        first_code = next(i for i, line in enumerate(lines) if line.startswith("COPY shared"))
        assert install < first_code, name  # an edit to the code leaves the dependency layer cached
        assert any("pip install --no-deps ." in line for line in lines[first_code:]), name
    api_copies = [line for line in _dockerfile("Dockerfile.api") if line.startswith("COPY")]
    assert not any("workers" in line for line in api_copies)


def test_the_settings_reference_is_generated_from_the_fields_and_current() -> None:
    from fakescope.settings import Settings, reference

    assert all(f.description for f in Settings.model_fields.values()), "every setting says what it does"
    assert (ROOT / "docs" / "settings.md").read_text() == reference(), (
        "run: python -m fakescope.settings > docs/settings.md"
    )


def test_every_fakescope_variable_the_services_get_is_a_setting() -> None:
    # Settings refuses an unknown FAKESCOPE_ variable at start; this says which one before a deployment does.
    from fakescope.settings import OTHER_VARIABLES, variables

    known = set(variables()) | set(OTHER_VARIABLES)
    for name, svc in yaml.safe_load(_text())["services"].items():
        env = svc.get("environment") or {}
        names = env if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        unknown = sorted(n for n in names if n.startswith("FAKESCOPE_") and n not in known)
        assert not unknown, f"{name}: {unknown} are no settings (docs/settings.md)"
