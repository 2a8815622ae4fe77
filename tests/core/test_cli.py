import pytest

from fakescope.cli import DELEGATED, main


@pytest.mark.parametrize("name", sorted(DELEGATED))
def test_delegated_subcommands_reach_their_module(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_unknown_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["nope"])
    assert e.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
