"""The exported model's manifest: round trip, and bad fields named in a ManifestError."""

import json

import pytest

from clsloc.manifest import MANIFEST_FILE, Manifest, ManifestError
from clsloc.preprocess import Preprocessing


def make_manifest(**overrides) -> Manifest:
    fields = dict(
        name="rk",
        version="20260101-abc",
        classes=["kangaroo", "raccoon"],
        preprocessing=Preprocessing(size=(192, 160)),
        backbone="efficientnet_lite0",
        data_fingerprint="sha256:0123",
        head={"attach": "map", "per_class": False},
        metrics={"onnx": {"accuracy": 0.9}},
        parity={"passed": True},
    )
    fields.update(overrides)
    return Manifest(**fields)


def test_round_trip(tmp_path):
    manifest = make_manifest()
    path = manifest.save(tmp_path)
    assert path == tmp_path / MANIFEST_FILE
    loaded = Manifest.load(tmp_path)
    assert loaded == manifest
    assert loaded.preprocessing.size == (192, 160) and loaded.output_names == ("logits", "boxes")
    assert loaded.tag == "rk:20260101-abc"
    assert json.loads(path.read_text())["preprocessing"]["size"] == [192, 160]


def write(tmp_path, data) -> None:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data) if not isinstance(data, str) else data)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.pop("classes"), "classes"),
        (lambda d: d.pop("backbone"), "backbone"),
        (lambda d: d.update(classes=[]), "classes"),
        (lambda d: d.update(classes=["a", "a"]), "classes"),
        (lambda d: d.update(classes="cat"), "classes"),
        (lambda d: d.update(box_format="xywh_pixels"), "box_format"),
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d["preprocessing"].update(interpolation="lanczos"), "preprocessing"),
        (lambda d: d["preprocessing"].update(size=[224]), "preprocessing"),
        (lambda d: d["preprocessing"].update(std=[0, 0, 0]), "preprocessing"),
        (lambda d: d.update(preprocessing=None), "preprocessing"),
    ],
)
def test_bad_fields_name_the_field_and_the_file(tmp_path, change, field):
    data = make_manifest().to_dict()
    change(data)
    write(tmp_path, data)
    with pytest.raises(ManifestError) as info:
        Manifest.load(tmp_path)
    assert field in str(info.value)
    assert str(tmp_path / MANIFEST_FILE) in str(info.value)


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        Manifest.load(tmp_path)
    write(tmp_path, "{oops")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(tmp_path)
    write(tmp_path, [1, 2])
    with pytest.raises(ManifestError, match="JSON object"):
        Manifest.load(tmp_path)
