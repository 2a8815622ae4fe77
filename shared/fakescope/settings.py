"""The job service's settings: one ``Settings`` read from ``FAKESCOPE_*`` environment variables.

With nothing configured every endpoint falls back to an embedded default under ``data_dir``: SQLite
for the database, a folder for objects and Kombu's filesystem transport for the broker, so the whole
stack runs on one machine with no server. Production points ``database_url``, ``broker_url`` and
``s3_endpoint`` at Postgres, Redis and MinIO.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "OTHER_VARIABLES",
    "PREFIX",
    "CallbackSettings",
    "ExplainSettings",
    "FetchSettings",
    "ModelsSettings",
    "S3Settings",
    "Settings",
    "SettingsGroup",
    "get_settings",
    "variables",
]

PLACEHOLDER_SECRETS = frozenset({"changethis", "minioadmin", "secret", ""})

PREFIX = "FAKESCOPE_"

# The environment Settings.from_env reads instead of os.environ: pydantic-settings builds its sources in a
# classmethod that takes no argument of the call, and validation calls __init__ again, so it travels here.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("fakescope_settings_environ", default=None)

# Variables of the same prefix that are no setting: the service ignores them, and refuses every other
# unknown FAKESCOPE_ variable (a misspelt one would otherwise leave its setting at the default unnoticed).
OTHER_VARIABLES: dict[str, str] = {
    "FAKESCOPE_API_URL": "the client's API address (fakescope.client)",
    "FAKESCOPE_API_KEY": "the client's API key (fakescope.client)",
    "FAKESCOPE_CLIENT_CONFIG": "the client's config file (fakescope.client)",
    "FAKESCOPE_CACHE_DIR": "downloaded training data (fakescope.data)",
    "FAKESCOPE_TEST_POSTGRES_URL": "the test suite's Postgres server (tests/utils)",
    "FAKESCOPE_TEST_REDIS_URL": "the test suite's Redis server (tests/utils)",
    "FAKESCOPE_TEST_REDIS_DB": "the test suite's Redis database (tests/utils)",
    "FAKESCOPE_TEST_S3_ENDPOINT": "the test suite's S3 server, instead of moto (tests/utils)",
    "FAKESCOPE_TEST_ARTIFACTS": "the report-page test's screenshots (tests/api)",
    "FAKESCOPE_BENCH_LOGS": "the service benchmark's log folder (ops/bench)",
}


class SettingsGroup(BaseModel):
    """Settings that belong together: one field of :class:`Settings`, read the same way as the others.

    Field ``name`` of a group is the variable ``FAKESCOPE_<env_prefix><NAME>``, and the keyword
    argument ``Settings(<env_prefix><name>=...)``; a field whose variable is spelt otherwise says so in
    ``env_names``. Unknown keys are refused.
    """

    model_config = ConfigDict(extra="forbid")

    env_prefix: ClassVar[str] = ""
    env_names: ClassVar[dict[str, str]] = {}

    @classmethod
    def key(cls, field: str) -> str:
        """The flat key of ``field``: its variable without ``FAKESCOPE_``, in lower case."""
        return cls.env_names.get(field, f"{cls.env_prefix}{field}").lower()

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable of ``field``."""
        return f"{PREFIX}{cls.key(field).upper()}"


class ExplainSettings(SettingsGroup):
    """The explainer: which backend, and where its models are.

    ``Settings.explain``, passed whole to :func:`fakescope.explain.load_explainer`.
    """

    # These variables predate the group and deployments set them: FAKESCOPE_CLIP_MODEL and so on,
    # with the backend under FAKESCOPE_EXPLAIN_BACKEND.
    env_prefix = ""
    env_names = {"backend": "explain_backend"}

    backend: str | None = Field(
        None,
        description="evidence or vlm (unset: vlm when both model folders below are set, else evidence)",
    )
    clip_model: str | None = Field(
        None, description="CLIP/SigLIP hub id or folder (the vlm backend's scorer; the evidence backend's class gate)"
    )
    vlm_model: str | None = Field(None, description="Idefics2 hub id or folder (vlm backend)")
    vlm_lora: str | None = Field(None, description="LoRA adapter folder for the Idefics2 model (optional)")
    vlm_max_new_tokens: int | None = Field(None, ge=1, description="the VLM's token budget per answer (unset: 240)")

    @field_validator("backend", "clip_model", "vlm_model", "vlm_lora", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        return (v.strip() or None) if isinstance(v, str) else v

    @property
    def chosen_backend(self) -> str:
        return (self.backend or ("vlm" if self.clip_model and self.vlm_model else "evidence")).lower()


class S3Settings(SettingsGroup):
    """The object store: originals, shards and overlays.

    ``Settings.s3``; its variables are ``FAKESCOPE_S3_*``.
    """

    env_prefix = "s3_"

    endpoint: str | None = Field(
        None, description="S3 (MinIO) endpoint (unset: objects in a folder under data_dir, served by the API)"
    )
    public_endpoint: str | None = Field(
        None, description="the host presigned URLs are signed for, as clients reach it (default: endpoint)"
    )
    access_key: str = Field("minioadmin", description="object-store access key")
    secret_key: str = Field("minioadmin", description="object-store secret key (production refuses the placeholder)")
    bucket: str = Field("fakescope", description="bucket of originals, shards and overlays")
    region: str = Field("us-east-1", description="region presigned URLs are signed for")
    connect_timeout_s: float = Field(
        5.0, gt=0, description="seconds to connect to the object store before a request fails (tasks retry it)"
    )
    read_timeout_s: float = Field(60.0, gt=0, description="seconds to wait on an object-store read")


def _listed(v: object) -> object:
    # A JSON list (["10.0.0.0/8"]) or a comma-separated string, from the environment or as an argument.
    if isinstance(v, str):
        return json.loads(v) if v.strip().startswith("[") else [n.strip() for n in v.split(",") if n.strip()]
    return v


# Networks an outbound request may reach besides the public internet (webhooks, image URLs).
NetworkList = Annotated[list[str], BeforeValidator(_listed)]
PortList = Annotated[list[int], BeforeValidator(_listed)]
NameList = Annotated[list[str], BeforeValidator(_listed)]


def _allowed_networks(reach: str) -> Any:
    """The field of an outbound guard's (:mod:`fakescope.outbound`) private networks; ``reach``: who
    goes there and how ("webhooks may reach")."""
    return Field(
        default_factory=list, description=f"private networks {reach} besides the public internet (JSON list or commas)"
    )


def _allowed_ports(who: str) -> Any:
    """The field of an outbound guard's ports on public hosts; ``who``: the traffic ("webhooks")."""
    return Field(
        default_factory=lambda: [80, 443],
        description=f"ports {who} may use on public hosts (any port inside allowed_networks)",
    )


class CallbackSettings(SettingsGroup):
    """Webhook delivery: timeouts, retries and where a callback may go.

    ``Settings.callback``; its variables are ``FAKESCOPE_CALLBACK_*``.
    """

    env_prefix = "callback_"

    timeout_s: float = Field(10.0, description="seconds for each of connect, send and read of one webhook attempt")
    attempts: int = Field(3, description="webhook tries before the delivery is given up")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each attempt")
    max_response_bytes: int = Field(
        64 * 1024, ge=0, description="a receiver's response body is read up to this many bytes, then dropped"
    )
    redeliver_after_s: float = Field(
        300.0, gt=0, description="the sweeper re-sends a finished job's webhook still undelivered after this long"
    )
    # Networks webhooks may reach besides the public internet (e.g. "10.0.0.0/8" for an in-cluster
    # receiver); loopback, private and link-local addresses are refused otherwise.
    allowed_networks: NetworkList = _allowed_networks("webhooks may reach")
    allowed_ports: PortList = _allowed_ports("webhooks")


class FetchSettings(SettingsGroup):
    """Fetched images: where a worker may fetch an image a job names by address, and for how long.

    ``Settings.fetch``; its variables are ``FAKESCOPE_FETCH_*``. The same outbound guard as webhooks
    (:mod:`fakescope.outbound`): public addresses only unless a network is allowed here.
    """

    env_prefix = "fetch_"

    allow_http: bool = Field(False, description="fetch http:// URLs too (https only by default)")
    allowed_networks: NetworkList = _allowed_networks("image URLs may point into")
    allowed_ports: PortList = _allowed_ports("image URLs")
    connect_timeout_s: float = Field(5.0, gt=0, description="seconds to connect to an image's host")
    read_timeout_s: float = Field(10.0, gt=0, description="longest wait for the next bytes of an image")
    deadline_s: float = Field(30.0, gt=0, description="a whole fetch, redirects and body included, within this")
    max_redirects: int = Field(3, ge=0, description="redirects followed, each checked again")
    max_bytes: int = Field(64 * 1024**2, ge=1, description="an image URL's body is refused past this many bytes")


class ModelsSettings(SettingsGroup):
    """The model registry: who may fine-tune and promote, the fine-tune recipe, the evaluation gate.

    ``Settings.models``; its variables are ``FAKESCOPE_MODELS_*`` (docs/operations.md, "Keeping up
    with new generators").
    """

    env_prefix = "models_"

    admin_tenants: NameList = Field(
        default_factory=list,
        description="tenants (by name) whose keys may train, promote and roll back models (JSON list or commas)",
    )
    epochs: int = Field(3, ge=1, description="fine-tune epochs when a request names none")
    batch_size: int = Field(64, ge=1, description="fine-tune batch size")
    lr: float = Field(1e-3, gt=0, description="fine-tune peak learning rate (lower than training from scratch)")
    holdout_share: float = Field(
        0.2, gt=0, lt=1, description="share of the platform's labelled images held out for the gate, never trained on"
    )
    reference: str | None = Field(
        None, description="a REAL/FAKE folder both models are also scored on (CIFAKE validation in production)"
    )
    gate_margin: float = Field(
        0.02,
        ge=0,
        description="promotion is refused when the candidate's AUC is below the live one's by more, on any set",
    )
    pickup_ttl_s: float = Field(
        5.0, ge=0, description="classify workers look up the promoted version at most this often (at chunk starts)"
    )
    threads: int | None = Field(None, ge=1, description="torch threads of a fine-tune (unset: torch's choice)")
    shadow_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="share of classified items a shadowing candidate also scores, on the train pool (0: none)",
    )


class Settings(BaseSettings):
    """Every knob of the API, the workers and the stack runner; docs/settings.md is generated from the
    fields' descriptions (``python -m fakescope.settings``; a test keeps it current)."""

    # Only the sources below: keyword arguments over FAKESCOPE_* variables, both spelt as docs/settings.md
    # lists them and both through _nest, which refuses unknown keys.
    model_config = SettingsConfigDict(extra="forbid")

    environment: Literal["development", "production"] = Field(
        "development", description="production refuses placeholder secrets"
    )
    data_dir: Path = Field(
        Path(".fakescope"),
        description="the embedded mode's folder: SQLite database, objects, broker, logs, generated secrets",
    )
    database_url: str | None = Field(None, description="Postgres URL (unset: SQLite under data_dir)")
    broker_url: str | None = Field(
        None, description="Redis URL of the Celery broker (unset: the filesystem broker under data_dir)"
    )
    s3: S3Settings = Field(default_factory=S3Settings, description="the object store (below)")
    secret_key: str = Field(
        "changethis",
        description="signs local object, overlay and image URLs and report tokens (production refuses the placeholder)",
    )
    public_url: str = Field("http://127.0.0.1:8000", description="the API's address as clients reach it")

    queue_classify: str = Field("classify", description="queue of the classify pool")
    queue_explain: str = Field("explain", description="queue of the explain pool")
    queue_webhooks: str = Field("webhooks", description="queue of the webhooks pool")
    queue_train: str = Field("train", description="queue of the train pool (fine-tunes)")
    chunk_size: int = Field(128, ge=1, description="images per classify task")
    batch_size: int = Field(32, ge=1, description="images per forward pass")
    decode_threads: int | None = Field(
        None,
        ge=0,
        description="threads a classify worker decodes images on ahead of the model (unset: none where the model"
        " runs on one CPU thread, two elsewhere; 0: in line)",
    )
    explain_chunk_size: int = Field(8, ge=1, description="images per explain task")
    explain: ExplainSettings = Field(default_factory=ExplainSettings, description="the explainer (below)")
    worker_pool: str = Field(
        "worker", description="the pool a worker process serves (classify, explain, webhooks): its metrics' label"
    )
    checkpoint: str | None = Field(None, description="detector checkpoint folder (unset: the shipped default)")
    task_time_limit_s: int = Field(1800, ge=1, description="hard limit of one task")
    # A 40-megapixel PNG decodes and shrinks in a second or two on one core; a crafted file can cost tens
    # of seconds of parsing, which would otherwise come out of its whole chunk's time limit.
    image_time_limit_s: float = Field(
        10.0,
        gt=0,
        description="one image's decoding and provenance reading in a classify or explain chunk (and in"
        " fakescope scan) is stopped past this, and that image fails alone",
    )
    # A task that meets a transient error (object store or database unreachable) is retried this many
    # times, waiting task_retry_backoff_s, then twice that, and so on up to task_retry_backoff_max_s.
    task_max_retries: int = Field(5, ge=0, description="retries of a task after a transient error")
    worker_max_tasks_per_child: int | None = Field(
        1000, ge=1, description="a worker's pool process is replaced after this many tasks (unset: never)"
    )
    worker_max_memory_per_child_mb: int | None = Field(
        4096,
        ge=64,
        description="a worker's pool process is replaced after a task that leaves it above this resident size",
    )
    max_deliveries: int = Field(
        3, ge=1, description="an image whose classification starts this many times without finishing fails"
    )
    task_retry_backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each retry")
    task_retry_backoff_max_s: float = Field(60.0, ge=0, description="longest retry delay")
    # Redis hands an unacknowledged message to another worker after this long; it must exceed the
    # longest task, or a slow task runs twice at once.
    visibility_timeout_s: int = Field(
        7200, ge=1, description="Redis redelivers an unacknowledged task after this; must exceed the task limit"
    )
    restore_interval_s: int = Field(10, ge=1, description="how often a worker looks for expired messages")
    # Test only: fault tests kill a worker while it provably holds a started chunk, instead of racing it
    # with signals. Never set in production: every chunk would wait on a file nobody writes.
    test_hold_dir: Path | None = Field(
        None,
        description="test only (unset: off): after a chunk's start commits, its task writes"
        " `<dir>/<task id>.reached` and waits (up to 120 s) for `<dir>/<task id>.release` or `<dir>/release`",
    )
    sweep_after_s: int | None = Field(
        None, ge=0, description="re-enqueue work waiting longer than this (default: task time limit + 60 s)"
    )
    sweep_every_s: float = Field(60.0, gt=0, description="how often the sweeper runs")
    retention_days: float | None = Field(
        None,
        gt=0,
        description="the sweeper deletes finished jobs, their rows and objects, this long after (unset: kept)",
    )
    upload_timeout_s: int = Field(
        3600, ge=1, description="a job whose upload request has not finished after this long is closed by the sweeper"
    )

    max_upload_bytes: int = Field(2 * 1024**3, description="largest body of a PUT to a local presigned URL")
    max_request_bytes: int = Field(2 * 1024**3, ge=1, description="larger upload bodies get 413")
    max_json_bytes: int = Field(
        16 * 1024**2, ge=1, description="larger bodies on every other route get 413 (100,000 upload names fit)"
    )
    c2pa_trust_anchors: Path | None = Field(
        None, description="PEM file of the C2PA signers to trust (provenance.c2pa.trusted); unset: no trust list"
    )
    upload_memory_bytes: int = Field(
        1024**3, ge=1, description="upload bytes one API process holds in memory at once, over every request"
    )
    upload_memory_wait_s: float = Field(
        30.0, ge=0, description="how long an upload waits for others to free that memory before a 503"
    )
    rate_limit_per_minute: int = Field(3000, ge=0, description="requests per API key per minute (0: none)")
    # Signed overlay and image URLs carry no key. Each job's are counted in a token bucket sized from
    # the job: fetching every overlay and original of a job of any size fits, replaying them does not.
    signed_gets_per_minute: int = Field(
        600,
        ge=0,
        description="GETs of one job's signed overlay and image URLs a minute, at least (0: no limit)",
    )
    signed_gets_per_item_per_minute: float = Field(
        6.0,
        ge=0,
        description="...and this many a minute per image of the job, when that is more (past both: 429)",
    )
    signed_gets_at_once: int = Field(
        8, ge=1, description="signed overlay and image GETs one API process serves at once; the rest wait"
    )
    signed_gets_wait_s: float = Field(
        10.0, ge=0, description="how long a signed GET waits for one of those before it gets 503 (Retry-After)"
    )
    max_items_per_job: int = Field(100_000, description="images per job")
    detect_timeout_s: float = Field(
        10.0,
        gt=0,
        le=120,
        description="how long POST /v1/detect waits for the classify pool before it answers 503 and drops the check",
    )
    presign_expiry_s: int = Field(3600, description="lifetime of presigned and signed URLs")
    report_link_expiry_s: int = Field(7 * 24 * 3600, ge=60, description="how long a report link's token reads its job")
    callback: CallbackSettings = Field(default_factory=CallbackSettings, description="webhooks (below)")
    fetch: FetchSettings = Field(default_factory=FetchSettings, description="image URLs (below)")
    models: ModelsSettings = Field(default_factory=ModelsSettings, description="the model registry (below)")
    bootstrap_api_key: str | None = Field(None, description="an API key registered for tenant 'default' at prestart")
    metrics_port: int | None = Field(None, description="a worker process serves Prometheus metrics here")
    metrics_host: str = Field("0.0.0.0", description="address a worker's metrics server binds")
    log_format: Literal["json", "text"] = Field("json", description="json (one object a line) or text")
    flower_basic_auth: str | None = Field(None, description="user:password that Flower asks for")
    internal_token: str | None = Field(
        None,
        description="bearer token for /metrics and /readyz's details; unset: only loopback clients get them",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        environ = _ENVIRON.get()
        return _Nested(settings_cls, init_settings), _Environment(
            settings_cls, os.environ if environ is None else environ
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **values: Any) -> Settings:
        """Settings from ``environ`` alone (and ``values`` over it), as a process with exactly that
        environment reads them: this process's own ``os.environ`` is not looked at."""
        token = _ENVIRON.set(environ)
        try:
            return cls(**values)
        finally:
            _ENVIRON.reset(token)

    @model_validator(mode="before")
    @classmethod
    def _nest(cls, data: object) -> object:
        return _nest(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.database_url and self.database_url.startswith(("postgresql://", "postgres://")):
            self.database_url = "postgresql+psycopg://" + self.database_url.split("://", 1)[1]
        if self.environment != "development":
            for name, value in (("SECRET_KEY", self.secret_key), ("S3_SECRET_KEY", self.s3.secret_key)):
                if value in PLACEHOLDER_SECRETS:
                    raise ValueError(f"FAKESCOPE_{name} must be set to a real secret outside development")
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError("FAKESCOPE_VISIBILITY_TIMEOUT_S must exceed FAKESCOPE_TASK_TIME_LIMIT_S")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'fakescope.db').resolve()}"

    @property
    def sweep_after(self) -> int:
        return self.sweep_after_s if self.sweep_after_s is not None else self.task_time_limit_s + 60

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_transport_options(self) -> dict[str, object]:
        if self.broker_url is None:
            folder, control = self.broker_folders
            # Kombu's control (broadcast) folder defaults to ./control in the working directory.
            return {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(control)}
        return {
            "visibility_timeout": self.visibility_timeout_s,
            "unacked_restore_interval": self.restore_interval_s,
            "unacked_restore_throttle": 1,
        }

    @property
    def broker_folders(self) -> tuple[Path, Path]:
        """The filesystem broker's message and control folders (the embedded mode; created by
        :func:`fakescope.tasks.make_celery`, not here)."""
        return (self.data_dir / "broker").resolve(), (self.data_dir / "broker-control").resolve()

    @property
    def objects_dir(self) -> Path:
        return (self.data_dir / "objects").resolve()


@functools.lru_cache
def get_settings() -> Settings:
    return Settings()


def _groups() -> dict[str, type[SettingsGroup]]:
    groups = {}
    for name, field in Settings.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, SettingsGroup):
            groups[name] = field.annotation
    return groups


@functools.cache
def _keys() -> dict[str, tuple[str, str | None]]:
    """Every setting's flat key (its variable without ``FAKESCOPE_``, lower case): its Settings field,
    and the field within that group for a grouped one."""
    groups = _groups()
    keys: dict[str, tuple[str, str | None]] = {
        name: (name, None) for name in Settings.model_fields if name not in groups
    }
    for name, group in groups.items():
        for field in group.model_fields:
            key = group.key(field)
            if key in keys or key in groups:
                raise TypeError(f"{PREFIX}{key.upper()} would name two settings")
            keys[key] = (name, field)
    return keys


def variables() -> dict[str, tuple[str, str | None]]:
    """Every variable ``Settings`` reads: its Settings field, and the field within that group for a grouped one."""
    return {f"{PREFIX}{key.upper()}": path for key, path in _keys().items()}


def _unknown(key: str) -> str:
    known = list(_keys())
    near = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {PREFIX}{near[0].upper()} ({near[0]})?" if near else ""
    return f"{PREFIX}{key.upper()} ({key}){hint}"


def _nest(data: dict[str, Any]) -> dict[str, Any]:
    """Flat keys (``s3_endpoint``, ``clip_model``) into their groups; unknown keys refused, by name.

    A group given whole (``s3=S3Settings(...)`` or a dict) takes the flat keys of its fields on top.
    """
    keys, groups = _keys(), _groups()
    out: dict[str, Any] = {}
    flat: dict[str, dict[str, Any]] = {}
    unknown = []
    for key, value in data.items():
        path = keys.get(key)
        if key in groups:
            out[key] = value
        elif path is None:
            unknown.append(key)
        elif path[1] is None:
            out[key] = value
        else:
            flat.setdefault(path[0], {})[path[1]] = value
    if unknown:
        raise ValueError("unknown setting " + ", ".join(_unknown(k) for k in sorted(unknown)))
    for group, fields in flat.items():
        whole = out.get(group)
        if isinstance(whole, BaseModel):
            whole = whole.model_dump()
        out[group] = {**whole, **fields} if isinstance(whole, dict) else fields
    return out


def _environment_keys(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``FAKESCOPE_*`` variables of ``environ`` as flat keys; the other variables of the prefix left out."""
    return {
        k[len(PREFIX) :].lower(): v
        for k, v in environ.items()
        if k.upper().startswith(PREFIX) and k.upper() not in OTHER_VARIABLES
    }


class _Environment(PydanticBaseSettingsSource):
    """``FAKESCOPE_*`` variables, grouped by :func:`_nest` the way keyword arguments are."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads every variable at once

    def __call__(self) -> dict[str, Any]:
        return _nest(_environment_keys(self.environ))


class _Nested(PydanticBaseSettingsSource):
    """Keyword arguments, grouped by :func:`_nest` before they are merged over the environment's, so that
    ``Settings(s3_bucket=...)`` beats ``FAKESCOPE_S3_BUCKET`` field by field."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _nest(self.inner())


def _row(variable: str, field: FieldInfo) -> str:
    default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    shown = "unset" if default is None else f"`{default.value if hasattr(default, 'value') else default}`"
    return f"| `{variable}` | {shown} | {field.description or ''} |"


def reference() -> str:
    """docs/settings.md: every setting's variable, default and description, from the fields themselves."""
    rows = [
        "# Settings",
        "",
        "Environment variables, prefix `FAKESCOPE_` (`fakescope.settings.Settings`). Generated by",
        "`python -m fakescope.settings > docs/settings.md` from the fields' descriptions; a test keeps it current.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    groups = _groups()
    for name, field in Settings.model_fields.items():
        if name not in groups:
            rows.append(_row(f"{PREFIX}{name.upper()}", field))
    for name, group in groups.items():
        rows += ["", f"`Settings.{name}`: {(group.__doc__ or '').splitlines()[0].lower()}", "", *rows[5:7]]
        for key, field in group.model_fields.items():
            rows.append(_row(group.variable(key), field))
    rows += [
        "",
        "Other variables of the prefix are no settings: the service ignores these and refuses any other.",
        "",
        "| variable | read by |",
        "|---|---|",
        *(f"| `{k}` | {v} |" for k, v in OTHER_VARIABLES.items()),
    ]
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
