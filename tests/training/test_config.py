"""One source for training options: a recipe file, flags over it, and the config.yaml every run writes."""

from __future__ import annotations

import json

import pytest
import yaml

from clsloc.training.config import TrainConfig, load_recipe


def parse(*argv):
    """The options ``clsloc train ARGV`` would train with."""
    import argparse

    from clsloc.training import train
    from clsloc.training.config import config_from_args

    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    return config_from_args(parser.parse_args([str(a) for a in argv]))


def test_defaults_come_from_the_dataclass(tmp_path):
    assert parse(tmp_path) == TrainConfig(datasets=[str(tmp_path)])


def test_a_recipe_sets_options_and_flags_override_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump({"datasets": ["a", "b"], "epochs": 3, "lr": "1e-4", "finetune-epochs": 0, "tta": False})
    )
    config = parse("--config", recipe)
    assert (config.datasets, config.epochs, config.lr, config.finetune_epochs, config.tta) == (
        ["a", "b"],
        3,
        1e-4,
        0,
        False,
    )
    config = parse("c", "--config", recipe, "--epochs", "5", "--tta")
    assert (config.datasets, config.epochs, config.lr, config.tta) == (["c"], 5, 1e-4, True)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"epochz": 3}, "unknown option 'epochz'"),
        ({"epochs": "many"}, "option 'epochs': expected int, got 'many'"),
        ({"tta": "yes please"}, "option 'tta': expected true or false"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_a_bad_recipe_is_an_error_naming_the_option(tmp_path, content, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(content))
    with pytest.raises(ValueError, match=message):
        load_recipe(recipe)


def test_the_written_config_yaml_repeats_the_run(synth, tiny, cli, tmp_path):
    """Training again from RUN/config.yaml gives the same options and the same epochs, number for number."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert (
        cli("train", synth, "--out", first, "--epochs", "2", "--finetune-epochs", "1", "--box-weight", "7", *tiny) == 0
    )
    written = load_recipe(first / "config.yaml")
    assert written["box_weight"] == 7.0 and written["epochs"] == 2 and written["datasets"] == [str(synth)]
    assert cli("train", "--config", first / "config.yaml", "--out", second, "--quiet") == 0
    assert load_recipe(second / "config.yaml") == written

    def epochs(run):
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in lines]

    assert epochs(first) == epochs(second)
