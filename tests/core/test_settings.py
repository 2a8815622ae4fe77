"""Settings: every group read one way, from the variables docs/settings.md lists, and nothing unknown let by."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from fakescope.settings import OTHER_VARIABLES, ExplainSettings, S3Settings, Settings, SettingsGroup, variables

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def _value(annotation: Any, default: Any) -> tuple[str, Any]:
    """A variable's text unlike the default, and the value the field should then hold."""
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if isinstance(default, int):
        return str(default + 7), default + 7
    if isinstance(default, float):
        return str(default + 0.5), default + 0.5
    if isinstance(default, Path):
        return "/srv/elsewhere", Path("/srv/elsewhere")
    if isinstance(default, list):
        return "[8080, 8443]" if "int" in str(annotation) else '["10.9.0.0/16"]', (
            [8080, 8443] if "int" in str(annotation) else ["10.9.0.0/16"]
        )
    if "Literal" in str(annotation):
        choices = [c for c in annotation.__args__ if c != default]
        return choices[0], choices[0]
    if "int" in str(annotation):
        return "77", 77
    if "float" in str(annotation):
        return "7.5", 7.5
    if "Path" in str(annotation):
        return "/srv/elsewhere", Path("/srv/elsewhere")
    return "set-from-env", "set-from-env"


# Fields whose variable another one constrains: set together with a value that keeps the whole valid.
_COMPANIONS = {
    "FAKESCOPE_TASK_TIME_LIMIT_S": {"FAKESCOPE_VISIBILITY_TIMEOUT_S": "99999"},
    "FAKESCOPE_ENVIRONMENT": {"FAKESCOPE_SECRET_KEY": "a-real-one", "FAKESCOPE_S3_SECRET_KEY": "a-real-one-too"},
}


@pytest.mark.parametrize("variable", sorted(variables()))
def test_every_field_of_every_group_is_set_by_its_documented_variable(variable: str) -> None:
    group, field = variables()[variable]
    assert f"| `{variable}` |" in DOCS.read_text(), f"{variable} is not in docs/settings.md"
    owner: type[BaseModel] = Settings
    if field is not None:
        nested = Settings.model_fields[group].annotation
        assert isinstance(nested, type) and issubclass(nested, BaseModel), nested
        owner = nested
    info = owner.model_fields[field or group]
    default = info.get_default(call_default_factory=True)
    text, expected = _value(info.annotation, default)

    settings = Settings.from_env({variable: text, **_COMPANIONS.get(variable, {})})
    held = getattr(settings, group)
    assert (getattr(held, field) if field is not None else held) == expected
    # The keyword argument is the same name without the prefix, lower case, for every group alike.
    kwargs: dict[str, Any] = {variable.removeprefix("FAKESCOPE_").lower(): text}
    kwargs |= {k.removeprefix("FAKESCOPE_").lower(): v for k, v in _COMPANIONS.get(variable, {}).items()}
    by_kwarg = getattr(Settings.from_env({}, **kwargs), group)
    assert (getattr(by_kwarg, field) if field is not None else by_kwarg) == expected


def test_every_group_is_a_settings_group_and_every_documented_variable_is_read() -> None:
    groups = [f.annotation for f in Settings.model_fields.values() if isinstance(f.annotation, type)]
    grouped = [g for g in groups if isinstance(g, type) and issubclass(g, BaseModel)]
    assert grouped and all(issubclass(g, SettingsGroup) for g in grouped)
    documented = set(re.findall(r"^\| `(FAKESCOPE_[A-Z0-9_]+)` \|", DOCS.read_text(), re.M))
    assert documented == set(variables()) | set(OTHER_VARIABLES)


def test_an_unknown_variable_is_refused_by_name_with_the_nearest_one() -> None:
    with pytest.raises(ValueError, match=r"FAKESCOPE_CALLBACK_ATTEMPS .*did you mean FAKESCOPE_CALLBACK_ATTEMPTS"):
        Settings.from_env({"FAKESCOPE_CALLBACK_ATTEMPS": "5"})
    with pytest.raises(ValueError, match=r"unknown setting FAKESCOPE_S3__ENDPOINT"):
        Settings.from_env({"FAKESCOPE_S3__ENDPOINT": "http://minio:9000"})  # one spelling per variable
    with pytest.raises(ValueError, match=r"FAKESCOPE_CLIP_MODL .*did you mean FAKESCOPE_CLIP_MODEL"):
        Settings.from_env({"FAKESCOPE_CLIP_MODL": "x"})


def test_an_unknown_keyword_is_refused_too_in_a_group_as_at_the_top() -> None:
    with pytest.raises(ValueError, match=r"s3_endpiont.*did you mean FAKESCOPE_S3_ENDPOINT \(s3_endpoint\)"):
        Settings.from_env({}, s3_endpiont="http://minio:9000")
    with pytest.raises(ValueError, match=r"explain\.bogus"):
        Settings.from_env({}, explain={"bogus": 1})
    with pytest.raises(ValueError, match=r"extra_forbidden"):
        S3Settings(endpont="http://minio:9000")  # type: ignore[call-arg]


def test_the_other_variables_of_the_prefix_are_let_by() -> None:
    settings = Settings.from_env({**dict.fromkeys(OTHER_VARIABLES, "x"), "FAKESCOPE_CLIP_MODEL": "clip"})
    assert settings.explain == ExplainSettings(clip_model="clip")


def test_keywords_beat_variables_field_by_field_and_a_whole_group_beats_them() -> None:
    env = {"FAKESCOPE_S3_BUCKET": "from-env", "FAKESCOPE_S3_REGION": "eu-west-1"}
    assert Settings.from_env(env, s3_bucket="kw").s3.model_dump(include={"bucket", "region"}) == {
        "bucket": "kw",
        "region": "eu-west-1",
    }
    assert Settings.from_env(env, s3=S3Settings(bucket="whole")).s3.region == "us-east-1"


def test_from_env_does_not_read_this_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKESCOPE_S3_BUCKET", "from-os-environ")
    assert Settings.from_env({}).s3.bucket == "fakescope"
    assert Settings().s3.bucket == "from-os-environ"
    monkeypatch.setenv("FAKESCOPE_NOT_A_SETTING", "1")
    with pytest.raises(ValueError, match="FAKESCOPE_NOT_A_SETTING"):
        Settings()


def test_settings_normalise_postgres_url_and_refuse_placeholders() -> None:
    s = Settings.from_env({}, database_url="postgresql://u@h:5432/db")
    assert s.sqlalchemy_url == "postgresql+psycopg://u@h:5432/db"
    with pytest.raises(ValueError, match="FAKESCOPE_SECRET_KEY"):
        Settings.from_env({}, environment="production", s3_secret_key="real-one")
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        Settings.from_env({"FAKESCOPE_TASK_TIME_LIMIT_S": "100", "FAKESCOPE_VISIBILITY_TIMEOUT_S": "50"})
