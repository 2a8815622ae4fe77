"""deploy/k8s renders, validates and agrees with the code it deploys, offline.

Every overlay is rendered with ``kubectl kustomize`` (no cluster), each object is validated against the
Kubernetes schemas ``kubernetes-validate`` ships, the KEDA objects against the CRDs in
deploy/k8s/schemas, and the manifests are held to the code: every variable they set is a ``Settings``
field, every queue a ScaledObject watches is the one its pool consumes (with Kombu's priority lists),
every image is one docker/ builds, tagged by the project's version, and no secret value is in the repo.
Each check is a function returning its problems, and a mutated copy of the rendered output proves it
can fail.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fakescope.settings import Settings, variables
from fakescope.tasks import make_celery, webhook_time_limit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# A version kubernetes-validate ships schemas for, and the kubectl these manifests are rendered with.
KUBERNETES_VERSION = "1.32.0"
KEDA_CRDS = {"ScaledObject": "keda-scaledobject.yaml", "TriggerAuthentication": "keda-triggerauthentication.yaml"}
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|BASIC_AUTH|TOKEN|_KEY\b|DATABASE_URL|BROKER_URL")
GPU_POOLS = ("classify", "explain")
# Stand-ins for what the fakescope-env secret holds, so Settings validates as it does in a pod.
SECRET_STAND_INS = {
    "FAKESCOPE_SECRET_KEY": "s" * 32,
    "FAKESCOPE_S3_SECRET_KEY": "s" * 32,
    "FAKESCOPE_BROKER_URL": "redis://redis:6379/0",
}

Obj = dict[str, Any]

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl renders the overlays (kubectl kustomize): install kubectl"
)


@functools.cache
def _rendered(overlay: str) -> tuple[Obj, ...]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return tuple(o for o in yaml.safe_load_all(out.stdout) if o)


def render(overlay: str) -> list[Obj]:
    """A copy the test may change."""
    return copy.deepcopy(list(_rendered(overlay)))


def _name(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _pods(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for obj in objs:
        if obj["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            yield obj, obj["spec"]["template"]["spec"]


def _containers(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for obj, pod in _pods(objs):
        for c in pod.get("initContainers", []) + pod["containers"]:
            yield obj, c


def _ours(container: Obj) -> bool:
    return container["image"].rsplit("/", 1)[-1].startswith("fakescope-")


def _by_name(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def _env(objs: list[Obj], container: Obj) -> dict[str, str]:
    """A container's literal environment: its ConfigMaps' data, then its own ``value``s."""
    maps = _by_name(objs, "ConfigMap")
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env |= maps[src["configMapRef"]["name"]].get("data", {})
    env |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return env


def _settings(env: dict[str, str]) -> Settings:
    """``Settings`` as a pod with ``env`` (and its secret) reads them, whatever this process's environment."""
    return Settings.from_env(SECRET_STAND_INS | env)


def settings_variables() -> frozenset[str]:
    """Every variable ``Settings`` reads (docs/settings.md lists the same names)."""
    return frozenset(variables())


def redis_lists(queue: str) -> set[str]:
    """The Redis lists Kombu keeps for ``queue`` with the app's transport options: the queue itself and one
    per non-zero priority step (``kombu.transport.redis.Channel._q_for_pri``)."""
    from kombu.transport.redis import Channel

    options = make_celery(_settings({})).conf.broker_transport_options
    sep = options.get("sep", Channel.sep)
    steps = options.get("priority_steps", Channel.priority_steps)
    return {queue} | {f"{queue}{sep}{step}" for step in steps if step}


def _pool_queue(objs: list[Obj], deployment: Obj) -> tuple[str, str, Settings]:
    """(the pool it serves, the queue it consumes, its settings) for a worker Deployment."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = _env(objs, container)
    command = container.get("command", []) + container.get("args", [])
    return env.get("FAKESCOPE_WORKER_POOL", ""), command[command.index("-Q") + 1], _settings(env)


# The checks: each returns its problems.


def schema_problems(objs: list[Obj]) -> list[str]:
    problems = []
    for obj in objs:
        try:
            if obj["kind"] in KEDA_CRDS:
                crd = yaml.safe_load((K8S / "schemas" / KEDA_CRDS[obj["kind"]]).read_text())
                version = next(v for v in crd["spec"]["versions"] if v["name"] == obj["apiVersion"].split("/")[1])
                jsonschema.validate(obj, version["schema"]["openAPIV3Schema"])
            else:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as e:
            where = "/".join(str(p) for p in getattr(e, "absolute_path", getattr(e, "path", [])))
            problems.append(f"{_name(obj)}: {where}: {e.message[:200]}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{_name(obj)}: no schema for {obj['apiVersion']} {obj['kind']}")
    for so in (o for o in objs if o["kind"] == "ScaledObject"):
        # What KEDA's admission webhook asks of a formula: a target, and a name on every trigger.
        modifiers = so["spec"].get("advanced", {}).get("scalingModifiers")
        if modifiers:
            names = [t.get("name") for t in so["spec"]["triggers"]]
            if not modifiers.get("target") or None in names:
                problems.append(f"{_name(so)}: a formula needs a target and every trigger named")
            if set(re.findall(r"[A-Za-z_]\w*", modifiers["formula"])) != set(names):
                problems.append(f"{_name(so)}: the formula {modifiers['formula']!r} does not sum triggers {names}")
    return problems


def env_problems(objs: list[Obj]) -> list[str]:
    problems = []
    known = settings_variables()
    for obj, c in _containers(objs):
        if not _ours(c):
            continue
        for name in _env(objs, c).keys() | {e["name"] for e in c.get("env", [])}:
            if name.startswith("FAKESCOPE_") and name not in known:
                problems.append(f"{_name(obj)} {c['name']}: {name} is no Settings field")
    return problems


def queue_problems(objs: list[Obj]) -> list[str]:
    problems = []
    deployments = _by_name(objs, "Deployment")
    consumed: dict[str, str] = {}
    for name, dep in deployments.items():
        if "fakescope.io/pool" not in dep["metadata"].get("labels", {}):
            continue
        pool, queue, settings = _pool_queue(objs, dep)
        routed = {route["queue"] for route in make_celery(settings).conf.task_routes.values()}
        expected = getattr(settings, f"queue_{pool}", None)
        if queue != expected or queue not in routed:
            problems.append(f"{name}: pool {pool!r} consumes {queue!r}; its settings route it to {expected!r}")
        consumed[name] = queue
    for so in (o for o in objs if o["kind"] == "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]["name"]
        if target not in consumed:
            problems.append(f"{_name(so)}: scales {target}, which consumes no queue")
            continue
        watched = {t["metadata"]["listName"] for t in so["spec"]["triggers"] if t["type"] == "redis"}
        if watched != redis_lists(consumed[target]):
            problems.append(f"{_name(so)}: watches {sorted(watched)}, {target} consumes {consumed[target]!r}")
    missing = {n for n, d in deployments.items() if "fakescope.io/pool" in d["metadata"].get("labels", {})}
    missing -= {so["spec"]["scaleTargetRef"]["name"] for so in objs if so["kind"] == "ScaledObject"}
    problems += [f"{n}: no ScaledObject" for n in sorted(missing)]
    return problems


def image_problems(objs: list[Obj]) -> list[str]:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    problems = []
    for obj, c in _containers(objs):
        image = c["image"]
        repo, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        if not tag or tag == "latest":
            problems.append(f"{_name(obj)} {c['name']}: {image} has no version tag")
        if _ours(c):
            dockerfile = ROOT / "docker" / f"Dockerfile.{repo.rsplit('/', 1)[-1].removeprefix('fakescope-')}"
            if not dockerfile.is_file():
                problems.append(f"{_name(obj)} {c['name']}: {image}: no {dockerfile.relative_to(ROOT)}")
            if tag != version:
                problems.append(f"{_name(obj)} {c['name']}: {image} is not the project's version {version}")
    return problems


def secret_problems(objs: list[Obj]) -> list[str]:
    problems = [f"{_name(o)}: a Secret in the manifests" for o in objs if o["kind"] == "Secret"]
    for o in objs:
        if o["kind"] == "ConfigMap":
            problems += [f"{_name(o)}: {k} is a secret" for k in o.get("data", {}) if SECRET_NAMES.search(k)]
    for obj, c in _containers(objs):
        for e in c.get("env", []):
            if SECRET_NAMES.search(e["name"]) and "value" in e:
                problems.append(f"{_name(obj)} {c['name']}: {e['name']} has a value, not a secretKeyRef")
    return problems


# The tests.


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid(overlay: str) -> None:
    assert schema_problems(render(overlay)) == []


def test_the_keda_crds_are_valid_crds() -> None:
    for name in KEDA_CRDS.values():
        kubernetes_validate.validate(
            yaml.safe_load((K8S / "schemas" / name).read_text()), KUBERNETES_VERSION, strict=True
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_manifests_agree_with_the_code(overlay: str) -> None:
    objs = render(overlay)
    assert env_problems(objs) == []
    assert queue_problems(objs) == []
    assert image_problems(objs) == []
    assert secret_problems(objs) == []


def test_the_checks_catch_what_they_guard() -> None:
    objs = render("gpu")
    so = _by_name(objs, "ScaledObject")["fakescope-worker-classify"]
    so["spec"]["triggers"][1]["metadata"]["listName"] = "classify-priority"
    assert queue_problems(objs) != []

    # A renamed queue (a setting changed, the worker's -Q not) and a renamed setting.
    objs = render("gpu")
    config = next(o for o in objs if o["kind"] == "ConfigMap")
    config["data"]["FAKESCOPE_QUEUE_CLASSIFY"] = "classify-v2"
    assert any("classify-v2" in p for p in queue_problems(objs))
    config["data"]["FAKESCOPE_TASK_TIMELIMIT_S"] = "60"
    assert env_problems(objs) == [
        f"{_name(d)} {c['name']}: FAKESCOPE_TASK_TIMELIMIT_S is no Settings field"
        for d, c in _containers(objs)
        if _ours(c) and any("configMapRef" in s for s in c.get("envFrom", []))
    ]

    objs = render("gpu")
    _by_name(objs, "Deployment")["fakescope-api"]["spec"]["template"]["spec"]["containers"][0]["image"] = (
        "fakescope-api:latest"
    )
    _by_name(objs, "Deployment")["fakescope-sweeper"]["spec"]["template"]["spec"]["containers"][0]["image"] = (
        "fakescope-scheduler:0.1.0"
    )
    assert len(image_problems(objs)) == 3  # latest, not the version, and no Dockerfile

    objs = render("gpu")
    objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "stringData": {"a": "b"}})
    _by_name(objs, "Deployment")["fakescope-api"]["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "FAKESCOPE_SECRET_KEY", "value": "hunter2"}
    ]
    assert len(secret_problems(objs)) == 2

    objs = render("gpu")
    so = _by_name(objs, "ScaledObject")["fakescope-worker-explain"]
    so["spec"]["cooldownPeriods"] = 300
    _by_name(objs, "Deployment")["fakescope-api"]["spec"]["replica"] = 2
    assert len(schema_problems(objs)) == 2


def test_no_secret_value_is_in_the_repository() -> None:
    for path in K8S.rglob("*"):
        if path.suffix in (".yaml", ".yml", ".env", ".json"):
            for doc in yaml.safe_load_all(path.read_text()) if path.suffix != ".env" else []:
                assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), path
            if path.suffix == ".env":
                keys = [line.split("=", 1)[0] for line in path.read_text().splitlines() if "=" in line]
                assert not [k for k in keys if SECRET_NAMES.search(k)], path


def test_every_secret_the_manifests_read_has_its_documented_command() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text()
    commands = {
        m.group(1): set(re.findall(r"--from-literal=([A-Za-z0-9_.-]+)=", m.group(0)))
        for m in re.finditer(r"kubectl -n fakescope create secret generic ([a-z0-9-]+)(?:[^\n]*\\\n)*[^\n]*", docs)
    }
    for overlay in OVERLAYS:
        objs = render(overlay)
        for obj, c in _containers(objs):
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in commands, (_name(obj), src)
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in commands.get(ref["name"], set()), (_name(obj), ref)
        for ta in (o for o in objs if o["kind"] == "TriggerAuthentication"):
            for ref in ta["spec"]["secretTargetRef"]:
                assert ref["key"] in commands.get(ref["name"], set()), ref
    # The application's secret holds settings, by their variable names, and every secret they need.
    app = commands["fakescope-env"]
    assert app <= settings_variables()
    required = {"DATABASE_URL", "BROKER_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY", "SECRET_KEY", "INTERNAL_TOKEN"}
    assert {f"FAKESCOPE_{n}" for n in required} | {"FAKESCOPE_FLOWER_BASIC_AUTH"} <= app


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_stopped_worker_finishes_its_chunk_first(overlay: str) -> None:
    objs = render(overlay)
    for name, dep in _by_name(objs, "Deployment").items():
        if "fakescope.io/pool" not in dep["metadata"].get("labels", {}):
            continue
        pool, _, settings = _pool_queue(objs, dep)
        conf = make_celery(settings).conf
        # The webhooks pool's deliveries carry their own limit; the model pools run under the app's.
        limit = webhook_time_limit(settings) if pool == "webhooks" else conf.task_time_limit
        assert pool == "webhooks" or conf.task_soft_time_limit < limit
        assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > limit, name
        assert conf.task_acks_late and conf.task_reject_on_worker_lost
        # A pool process is replaced when a task leaves it large, before its container's limit is met.
        limit_mib = _mebibytes(dep["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"])
        assert conf.worker_max_memory_per_child is not None and conf.worker_max_tasks_per_child
        assert conf.worker_max_memory_per_child / 1024 < limit_mib, name


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_start_after_the_migration_and_ask_for_what_they_measured(overlay: str) -> None:
    objs = render(overlay)
    jobs = [o for o in objs if o["kind"] == "Job"]
    assert [j["spec"]["template"]["spec"]["containers"][0]["command"] for j in jobs] == [
        ["python", "-m", "api.prestart"]
    ]
    for dep in _by_name(objs, "Deployment").values():
        pod = dep["spec"]["template"]["spec"]
        if any(_ours(c) for c in pod["containers"]) and dep["metadata"]["name"] != "fakescope-flower":
            waits = [c["command"] for c in pod.get("initContainers", [])]
            assert ["python", "-m", "api.prestart", "--wait"] in waits, _name(dep)
    for obj, c in _containers(objs):
        resources = c.get("resources", {})
        assert {"cpu", "memory"} <= resources.get("requests", {}).keys(), (_name(obj), c["name"])
        assert "memory" in resources.get("limits", {}), (_name(obj), c["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_only_where_the_overlay_says(overlay: str) -> None:
    objs = render(overlay)
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so["spec"] for so in objs if so["kind"] == "ScaledObject"}
    for dep in _by_name(objs, "Deployment").values():
        pod = dep["spec"]["template"]["spec"]
        gpus = [c["resources"].get("limits", {}).get("nvidia.com/gpu") for c in pod["containers"]]
        pool = dep["metadata"].get("labels", {}).get("fakescope.io/pool")
        if overlay == "gpu" and pool in GPU_POOLS:
            assert gpus == [1] and pod["nodeSelector"] == {"fakescope.io/node-pool": f"gpu-{pool}"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
            assert scaled[dep["metadata"]["name"]]["minReplicaCount"] == 0  # an idle pool holds no GPU
        else:
            assert gpus == [None] * len(gpus) and "nodeSelector" not in pod, _name(dep)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_api_takes_ingress(overlay: str) -> None:
    objs = render(overlay)
    for policy in (o for o in objs if o["kind"] == "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            if not rule.get("from"):  # from anywhere
                assert policy["spec"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "fakescope-api"}}, (
                    _name(policy)
                )
    assert not [
        o for o in objs if o["kind"] == "Ingress" or o.get("spec", {}).get("type") in ("LoadBalancer", "NodePort")
    ]
    deny = _by_name(objs, "NetworkPolicy")["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_the_simulation_replays_the_shipped_rule() -> None:
    spec = importlib.util.spec_from_file_location("scaling_sim", ROOT / "ops" / "scaling_sim.py")
    assert spec is not None and spec.loader is not None
    sim = importlib.util.module_from_spec(spec)
    sys.modules["scaling_sim"] = sim  # its dataclasses look their module up
    try:
        spec.loader.exec_module(sim)
    finally:
        del sys.modules["scaling_sim"]
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so["spec"] for so in render("gpu") if so["kind"] == "ScaledObject"}
    classify, explain = scaled["fakescope-worker-classify"], scaled["fakescope-worker-explain"]
    targets = tuple(int(s["advanced"]["scalingModifiers"]["target"]) for s in (classify, explain))
    assert targets == sim.SHIPPED
    rule = sim.Rule(target=0)
    for s in (classify, explain):
        assert (s["pollingInterval"], s["cooldownPeriod"], s["minReplicaCount"]) == (
            rule.polling_s,
            rule.cooldown_s,
            rule.min_replicas,
        )
        assert s["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] == {
            "stabilizationWindowSeconds": rule.stabilization_s
        }
    out = subprocess.run(
        [sys.executable, str(ROOT / "ops" / "scaling_sim.py"), "--images", "20000", "--horizon-s", "900"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert f"max {classify['maxReplicaCount']}; explain" in out and f"max {explain['maxReplicaCount']}; KEDA" in out
    assert "(shipped)" in out
