import shutil

import pytest

from dogbreed.data.layout import check, display_name, scan
from dogbreed.errors import DogbreedError


def test_scan_reads_classes_and_splits(synth_data):
    layout = scan(synth_data)
    assert layout.labels.names == ["001.Affenpinscher", "002.Afghan_hound", "003.Airedale_terrier", "004.Akita"]
    assert layout.labels.display[1] == "Afghan hound"
    assert {k: sum(v) for k, v in layout.counts().items()} == {"train": 48, "valid": 8, "test": 8}


def test_labels_json_maps_index_to_folder_and_display_name(synth_data, tmp_path):
    layout = scan(synth_data)
    layout.labels.write(tmp_path / "labels.json")
    doc = (tmp_path / "labels.json").read_text()
    assert '"name": "001.Affenpinscher"' in doc and '"display": "Affenpinscher"' in doc


@pytest.mark.parametrize("folder, display", [
    ("001.Affenpinscher", "Affenpinscher"), ("042.Cairn_terrier", "Cairn terrier"), ("plain", "plain"),
])
def test_display_name(folder, display):
    assert display_name(folder) == display


def test_missing_data_dir(tmp_path):
    with pytest.raises(DogbreedError, match=r"data dir .*nope does not exist; expected DIR/\{train,valid,test\}"):
        scan(tmp_path / "nope")


def test_missing_split(data_copy):
    shutil.rmtree(data_copy / "valid")
    with pytest.raises(DogbreedError, match="has no valid folder"):
        scan(data_copy)


def test_no_class_folders(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / split).mkdir()
    with pytest.raises(DogbreedError, match="no class folders under .*train; .*dogbreed data synth"):
        scan(tmp_path)


def test_empty_class_folder(data_copy):
    for f in (data_copy / "test" / "004.Akita").iterdir():
        f.unlink()
    with pytest.raises(DogbreedError, match="class folder .*test/004.Akita holds no images"):
        scan(data_copy)


def test_class_sets_differ_lists_missing_and_extra(data_copy):
    shutil.rmtree(data_copy / "valid" / "002.Afghan_hound")
    (data_copy / "valid" / "099.Extra").mkdir()
    with pytest.raises(DogbreedError, match="valid/ is missing 002.Afghan_hound; extra 099.Extra"):
        scan(data_copy)


def test_fewer_than_two_classes(data_copy):
    for split in ("train", "valid", "test"):
        for name in ("002.Afghan_hound", "003.Airedale_terrier", "004.Akita"):
            shutil.rmtree(data_copy / split / name)
    with pytest.raises(DogbreedError, match="has 1 class folder; a classifier needs at least 2"):
        scan(data_copy)


def test_check_reports_unreadable_and_truncated_images(data_copy):
    folder = data_copy / "train" / "001.Affenpinscher"
    (folder / "notes.jpg").write_text("not an image")
    good = next(folder.glob("*.jpg")).read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 2])
    (folder / "README.txt").write_text("ignored")
    report = check(data_copy, progress=False)
    assert not report.ok
    bad = sorted(p.split("/")[-1] for p, _ in report.bad_images)
    assert bad == ["cut.jpg", "notes.jpg"]
    assert any("non-image file(s) ignored" in w for w in report.warnings)
    # Headers only: the truncated file passes, the non-image does not.
    quick = check(data_copy, full=False, progress=False)
    assert [p.split("/")[-1] for p, _ in quick.bad_images] == ["notes.jpg"]


def test_check_flags_class_imbalance(data_copy):
    for f in sorted((data_copy / "train" / "004.Akita").iterdir())[2:]:
        f.unlink()
    report = check(data_copy, progress=False)
    assert report.ok  # a warning, not an error
    assert any("class imbalance" in w and "004.Akita has 2" in w for w in report.warnings)


def test_check_warns_of_a_test_photo_that_is_also_in_train(data_copy):
    assert not any("more than one split" in w for w in check(data_copy, progress=False).warnings)  # synthetic: all distinct
    test_photo = next((data_copy / "test" / "004.Akita").glob("*.jpg"))
    copy = data_copy / "train" / "004.Akita" / "copied.jpg"
    copy.write_bytes(test_photo.read_bytes())
    report = check(data_copy, progress=False)
    assert report.ok  # a warning, not an error
    leak = [w for w in report.warnings if "more than one split" in w]
    assert leak and leak[0].startswith("1 image(s) appear") and str(copy) in leak[0] and str(test_photo) in leak[0]
    assert not any("more than one split" in w for w in check(data_copy, full=False, progress=False).warnings)


def test_images_outside_class_folders_are_named_not_silently_dropped(data_copy):
    photo = next((data_copy / "train" / "004.Akita").glob("*.jpg"))
    shutil.copy(photo, data_copy / "train" / "loose.jpg")  # directly in a split
    (data_copy / "valid" / "004.Akita" / "more").mkdir()
    shutil.copy(photo, data_copy / "valid" / "004.Akita" / "more" / "nested.jpg")  # a subfolder of a class
    (data_copy / "test" / "004.Akita" / ".ipynb_checkpoints").mkdir()  # hidden: not the user's data
    shutil.copy(photo, data_copy / "test" / "004.Akita" / ".ipynb_checkpoints" / "x.jpg")
    report = check(data_copy, full=False, progress=False)
    assert report.ok and {k: sum(v) for k, v in report.layout.counts().items()} == {"train": 48, "valid": 8, "test": 8}
    assert sorted(report.layout.misplaced) == sorted([str(data_copy / "train" / "loose.jpg"),
                                                       str(data_copy / "valid" / "004.Akita" / "more" / "nested.jpg")])
    assert any(w.startswith("2 image(s) outside a class folder ignored") for w in report.warnings)


def test_a_data_dir_that_is_a_file_says_so(tmp_path):
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(DogbreedError, match=r"data dir .*data.zip is a file, not a folder; expected"):
        scan(tmp_path / "data.zip")
