"""``clsloc evaluate MODEL --val-of RUN``: the exported model on its run's validation split gives exactly
the ONNX metrics export stored in the manifest (same images, same steps, same metrics code)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest

from clsloc.manifest import Manifest

pytestmark = pytest.mark.slow


def _add_second_object(xml_path) -> None:
    """A small second object in the top-left corner: the image becomes a multi-object one."""
    tree = ET.parse(xml_path)
    obj = ET.SubElement(tree.getroot(), "object")
    ET.SubElement(obj, "name").text = tree.getroot().find("object/name").text
    box = ET.SubElement(obj, "bndbox")
    for tag, value in (("xmin", 1), ("ymin", 1), ("xmax", 12), ("ymax", 12)):
        ET.SubElement(box, tag).text = str(value)
    tree.write(xml_path)


def test_evaluate_val_of_equals_the_manifests_onnx_metrics(tiny, synth, cli, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(synth, data)
    for xml_path in sorted((data / "annotations").glob("*.xml"))[::3]:
        _add_second_object(xml_path)
    run, model = tmp_path / "run", tmp_path / "model"
    assert cli("train", data, "--out", run, "--epochs", "2", "--finetune-epochs", "1", "--batch-size", "8", *tiny) == 0
    assert cli("export", run, "--out", model) == 0
    stored = Manifest.load(model).metrics["onnx"]
    assert stored["by_objects"]["multi"]["n"] > 0  # the comparison covers multi-object images

    capsys.readouterr()
    # batches and threads unlike export's: the numbers must not depend on them
    assert cli("evaluate", model, "--val-of", run, "--json", "--quiet", "--batch-size", "3", "--workers", "2") == 0
    captured = capsys.readouterr()
    ours = json.loads(captured.out)
    assert {key: ours[key] for key in stored} == stored  # every number, per class, confusion, breakdowns: exactly
    assert "equal to the ONNX validation metrics in the model's manifest" in captured.err
