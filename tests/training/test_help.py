"""`clsloc train|cv|tune --help` say each option's default, and no nonsense for on/off switches."""

import pytest

from clsloc.cli import main


@pytest.mark.parametrize("command", ["train", "cv", "tune"])
def test_help_shows_defaults_but_not_for_switches(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS stage 1 epochs: heads on the frozen backbone (default: 16)" in text
    # a switch like --no-pretrained is off by default; "(default: True)" would say the opposite
    assert "random backbone weights (tests) --attach" in text
    assert "(default: True)" not in text and "(default: False)" not in text
