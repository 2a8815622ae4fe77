from pathlib import Path

import pytest

from fakescope.cli import DELEGATED, main


@pytest.mark.parametrize("name", sorted(DELEGATED))
def test_delegated_subcommands_reach_their_module(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_subcommand_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["nope"])
    assert e.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_serve_makes_its_own_secrets_once(tmp_path: Path) -> None:
    from fakescope.settings import PLACEHOLDER_SECRETS
    from serve.stack import local_secrets

    first = local_secrets(tmp_path / "data")
    assert set(first) == {"FAKESCOPE_SECRET_KEY", "FAKESCOPE_FLOWER_BASIC_AUTH"}
    assert first["FAKESCOPE_SECRET_KEY"] not in PLACEHOLDER_SECRETS and len(first["FAKESCOPE_SECRET_KEY"]) >= 32
    assert first["FAKESCOPE_FLOWER_BASIC_AUTH"].startswith("admin:")
    assert (tmp_path / "data" / "secrets.json").stat().st_mode & 0o777 == 0o600
    assert local_secrets(tmp_path / "data") == first  # kept: URLs signed before a restart stay valid
    assert local_secrets(tmp_path / "other") != first  # never shared between installations
