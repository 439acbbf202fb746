"""COCO, YOLO and CSV readers, format detection and merging, on fixtures written here."""

import json

import pytest

from clsloc.datasets import DatasetError, detect_format, load_dataset


def problem_kinds(dataset):
    return sorted(p.kind for p in dataset.problems)


# -- COCO -----------------------------------------------------------------------------------


def coco(tmp_path, write_image, annotations, images=None, categories=None):
    root = tmp_path / "coco"
    write_image(root / "images" / "a.jpg", 100, 80)
    write_image(root / "images" / "b.jpg", 60, 60)
    doc = {
        "images": images
        if images is not None
        else [
            {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "train/b.jpg", "width": 60, "height": 60},  # path that is not there: matched by name
        ],
        "annotations": annotations,
        "categories": categories if categories is not None else [{"id": 1, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    path = root / "_annotations.coco.json"
    path.write_text(json.dumps(doc))
    return root, path


def test_coco_top_left_xywh(tmp_path, write_image):
    root, path = coco(
        tmp_path,
        write_image,
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5]},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [1.5, 2.5, 10, 20]},
        ],
    )
    assert detect_format(root) == ("coco", path)
    assert detect_format(path) == ("coco", path)
    data = load_dataset(path)
    assert data.problems == []
    records = {r.image.name: r for r in data.records}
    assert records["a.jpg"].box == (10, 20, 40, 60) and records["a.jpg"].label == "cat"
    assert len(records["a.jpg"].objects) == 2
    assert records["b.jpg"].box == (1.5, 2.5, 11.5, 22.5) and records["b.jpg"].label == "dog"


def test_coco_malformed(tmp_path, write_image):
    root, path = coco(
        tmp_path,
        write_image,
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 30, 40]},
            {"id": 2, "image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5]},  # unknown category
            {"id": 3, "image_id": 5, "category_id": 1, "bbox": [0, 0, 5, 5]},  # unknown image
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [1, 2, "x"]},  # bad bbox
            {"id": 5, "image_id": 2, "category_id": 1, "bbox": [10, 10, -5, 10]},  # negative width
            "nonsense",
        ],
    )
    data = load_dataset(path)
    assert [r.image.name for r in data.records] == ["a.jpg"]
    assert problem_kinds(data) == [
        "bad_annotation",
        "bad_annotation",
        "bad_box",
        "bad_box",
        "empty_annotation",
        "unknown_class",
    ]
    unknown = next(p for p in data.problems if p.kind == "unknown_class")
    assert "99" in unknown.detail and "annotations[1]" in unknown.file


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ('{"images": [], "categories": []}', "'annotations'")],
)
def test_coco_unusable_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(path)
    assert str(path) in str(info.value)


# -- YOLO ----------------------------------------------------------------------------------


def test_yolo_ultralytics_layout_with_data_yaml(tmp_path, write_image):
    root = tmp_path / "yolo"
    write_image(root / "images" / "train" / "a.jpg", 100, 50)
    write_image(root / "images" / "train" / "b.png", 40, 40, fmt="PNG")
    write_image(root / "images" / "train" / "bg.jpg", 40, 40)  # no label file: background image
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.1 0.1\n")
    (root / "labels" / "train" / "b.txt").write_text("0 0.25 0.25 0.5 0.5\n5 0.5 0.5 0.1 0.1\n\n0 0.5 0.5\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames:\n  0: cat\n  1: dog\n")
    assert detect_format(root)[0] == "yolo"
    data = load_dataset(root)
    records = {r.image.name: r for r in data.records}
    assert records["a.jpg"].label == "dog"
    assert records["a.jpg"].box == pytest.approx((40, 15, 60, 35))  # cx*W - w*W/2 ...
    assert len(records["a.jpg"].objects) == 2
    assert records["b.png"].box == pytest.approx((0, 0, 20, 20)) and len(records["b.png"].objects) == 1
    kinds = {(p.kind, p.file.rsplit("/", 1)[-1]) for p in data.problems}
    assert kinds == {("unknown_class", "b.txt:2"), ("bad_box", "b.txt:4"), ("empty_annotation", "bg.jpg")}
    assert "unknown class id 5" in next(p.detail for p in data.problems if p.kind == "unknown_class")


def test_yolo_flat_layout_with_classes_txt_and_polygon(tmp_path, write_image):
    root = tmp_path / "flat"
    write_image(root / "x.jpg", 200, 100)
    (root / "x.txt").write_text("1 0.1 0.2 0.5 0.2 0.3 0.9\n")  # polygon -> its bounding box
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "README.txt").write_text("not a label file")
    data = load_dataset(root)
    assert data.problems == []
    (record,) = data.records
    assert record.label == "dog" and record.box == pytest.approx((20, 20, 100, 90))


def test_yolo_roboflow_layout(tmp_path, write_image):
    root = tmp_path / "rf"
    for split, stem in (("train", "t"), ("valid", "v")):
        write_image(root / split / "images" / f"{stem}.jpg", 50, 50)
        (root / split / "labels").mkdir(parents=True)
        (root / split / "labels" / f"{stem}.txt").write_text(f"{int(split == 'valid')} 0.5 0.5 0.4 0.4\n")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['cat', 'dog']\n")
    assert detect_format(root)[0] == "yolo"
    data = load_dataset(root)
    assert data.problems == []
    assert {r.image.name: r.label for r in data.records} == {"t.jpg": "cat", "v.jpg": "dog"}
    assert data.records[0].box == pytest.approx((15, 15, 35, 35))


def test_yolo_bad_names_file(tmp_path, write_image):
    root = tmp_path / "y"
    write_image(root / "images" / "a.jpg")
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("nc: 2\n")
    with pytest.raises(DatasetError, match="'names'"):
        load_dataset(root)
    (root / "data.yaml").write_text("names: [cat: [\n")
    with pytest.raises(DatasetError, match="data.yaml: not a readable YAML"):
        load_dataset(root)


# -- CSV -----------------------------------------------------------------------------------


def test_csv_xml_to_csv_layout(tmp_path, write_image):
    write_image(tmp_path / "images" / "a.jpg", 100, 80)
    write_image(tmp_path / "images" / "b.jpg", 50, 50)
    path = tmp_path / "labels.csv"
    path.write_text(
        "filename,width,height,class,xmin,ymin,xmax,ymax\n"
        "a.jpg,100,80,cat,10,10,20,20\n"
        "a.jpg,100,80,dog,0,0,60,60\n"
        "b.jpg,0,0,cat,5,5,25,45\n"
    )
    assert detect_format(tmp_path) == ("csv", path)
    data = load_dataset(path)
    assert data.problems == []
    records = {r.image.name: r for r in data.records}
    assert records["a.jpg"].label == "dog" and len(records["a.jpg"].objects) == 2
    assert (records["b.jpg"].width, records["b.jpg"].height) == (50, 50)
    assert records["b.jpg"].box == (5, 5, 25, 45)


def test_csv_bad_rows_and_missing_columns(tmp_path, write_image):
    write_image(tmp_path / "a.jpg", 100, 80)
    path = tmp_path / "labels.csv"
    path.write_text(
        "filename,width,height,label,xmin,ymin,xmax,ymax\n"
        "a.jpg,100,80,cat,10,10,20,20\n"
        "a.jpg,100,80,,10,10,20,20\n"
        "a.jpg,100,80,cat,ten,10,20,20\n"
        "a.jpg,100,80,cat,30,30,20,20\n"
        "missing.jpg,100,80,cat,1,1,5,5\n"
        ",,,,,,,\n"
    )
    data = load_dataset(path)
    assert len(data.records) == 1 and len(data.records[0].objects) == 1
    where = {(p.kind, p.file.rsplit("/", 1)[-1]) for p in data.problems}
    assert ("missing_field", "labels.csv:3") in where
    assert ("bad_box", "labels.csv:4") in where
    assert ("bad_box", "a.jpg") in where  # inverted box, found by the shared rules
    assert ("missing_image", "missing.jpg") in where
    path.write_text("file_name,klass,x,y\nA,b,1,2\n")
    with pytest.raises(DatasetError, match="missing column.*filename"):
        load_dataset(path)
    path.write_text("")
    with pytest.raises(DatasetError, match="empty CSV"):
        load_dataset(path)


# -- merging ---------------------------------------------------------------------------------


def test_merge_formats_and_keep_going_after_a_bad_path(tmp_path, write_image, voc_dataset):
    voc_root = voc_dataset({"v": ([("bird", 1, 1, 30, 30)], (64, 48))})
    write_image(tmp_path / "csvdata" / "c.jpg", 40, 40)
    (tmp_path / "csvdata" / "l.csv").write_text(
        "filename,width,height,class,xmin,ymin,xmax,ymax\nc.jpg,40,40,fish,1,1,20,20\n"
    )
    data = load_dataset([voc_root, tmp_path / "csvdata"])
    assert data.classes == ["bird", "fish"]
    assert [s.split(":")[0] for s in data.sources] == ["voc", "csv"]
    partial = load_dataset([voc_root, tmp_path / "nothing", tmp_path / "csvdata"], errors="report")
    assert len(partial.records) == 2 and [p.kind for p in partial.problems] == ["unreadable_dataset"]
