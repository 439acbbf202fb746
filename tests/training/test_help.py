"""`clsloc train|cv|tune --help`: one flag per training option, its help from TrainConfig, its default shown."""

from dataclasses import fields

import pytest

from clsloc.cli import main
from clsloc.training.config import TrainConfig


@pytest.mark.parametrize("command", ["train", "cv", "tune"])
def test_help_lists_every_option_with_its_help_and_default(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS stage 1 epochs: heads on the frozen backbone" in text and "(default: 16)" in text
    # switches say on/off, never Python's True/False or None
    assert "--pretrained, --no-pretrained ImageNet weights (off: random weights, for tests) (default: on)" in text
    assert "(default: True)" not in text and "(default: False)" not in text and "(default: None)" not in text
    for f in fields(TrainConfig):
        if f.name != "datasets":
            flag = "--" + f.name.replace("_", "-")
            assert flag in text, flag
            # argparse wraps lines (also at a hyphen): compare without any whitespace
            assert "".join(f.metadata["help"].split()) in "".join(text.split()), f.name
