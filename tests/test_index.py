"""The pre-training records' index: flat arrays, cached once per node, and sampled verification."""

import json
import random
import threading
import time

import pytest
from PIL import Image

from vlpbench.config import AnnotationSource
from vlpbench.data import index as index_module
from vlpbench.data.datasets import DatasetError, SkipReport, load_image_captions, pairs_of
from vlpbench.data.index import PairIndex, open_pair_index


@pytest.fixture
def records(tmp_path):
    """Three images, five pairs; image 0 has boxes, images 0 and 1 one scene."""
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([
        {"image": "0.png", "caption": ["a red box", "a box"], "boxes": [[1, 2, 3, 4]], "scene_id": 7},
        {"image": "1.png", "caption": "b", "scene_id": 7},
        {"image": "2.png", "caption": ["c", "ç with ü"]}]))
    return ann


def open_index(ann, cache, **kwargs):
    settings = {"on_bad_record": "error", "verify_images": True, "skips": SkipReport(), "skip_hint": "hint",
                "cache": cache, "log": lambda *_: None} | kwargs
    return open_pair_index(AnnotationSource(ann=str(ann), image_root=str(ann.parent)), **settings)


def test_the_index_holds_every_pair_as_the_records_give_it(records, tmp_path):
    entries = load_image_captions([str(records)], tmp_path, "error", True, SkipReport())
    index = open_index(records, tmp_path / "cache")
    assert len(index) == 5
    assert [index.caption(i) for i in range(5)] == ["a red box", "a box", "b", "c", "ç with ü"]
    assert [index.match_id(i) for i in range(5)] == [m for _, _, m in pairs_of(entries)] == [0, 0, 0, 1, 1]
    assert [index.image(i).name for i in range(5)] == ["0.png", "0.png", "1.png", "2.png", "2.png"]
    assert index.boxes(0) == index.boxes(1) == [[1.0, 2.0, 3.0, 4.0]] and index.boxes(2) is None
    assert index.source(3) == f"{records}#2"
    assert list(index.captions()) == [c for e in entries for c in e.captions]


def test_the_index_is_built_once_and_again_when_the_annotations_change(records, tmp_path, monkeypatch):
    built = []
    original = PairIndex.of
    monkeypatch.setattr(PairIndex, "of", classmethod(lambda cls, entries: built.append(1) or original(entries)))
    open_index(records, tmp_path / "cache")
    open_index(records, tmp_path / "cache")
    assert len(built) == 1
    records.write_text(records.read_text().replace('"b"', '"bb"'))
    assert open_index(records, tmp_path / "cache").caption(2) == "bb" and len(built) == 2
    open_index(records, tmp_path / "cache", verify_images=False)  # another parse setting: another index
    assert len(built) == 3


def test_a_nodes_other_processes_wait_for_its_first(records, tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "node_local_rank", lambda: 1)
    found = []
    waiter = threading.Thread(target=lambda: found.append(len(open_index(records, tmp_path / "cache"))))
    waiter.start()
    time.sleep(1.5)
    assert not found  # it waits: LOCAL_RANK 1 never builds
    monkeypatch.setattr(index_module, "node_local_rank", lambda: 0)
    open_index(records, tmp_path / "cache")
    waiter.join(timeout=10)
    assert found == [5]


def test_the_first_processs_error_reaches_the_others(records, tmp_path, monkeypatch):
    records.write_text(json.dumps([{"image": "0.png"}]))
    with pytest.raises(DatasetError, match=r"record 0: record has no 'caption'"):
        open_index(records, tmp_path / "cache")
    monkeypatch.setattr(index_module, "node_local_rank", lambda: 1)
    with pytest.raises(DatasetError, match=r"record 0: record has no 'caption'"):
        open_index(records, tmp_path / "cache")


def test_sampled_verification_decodes_exactly_the_sampled_records(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"image": "bad.png", "caption": f"c{i}"} for i in range(10)]))
    skips = SkipReport()
    entries = load_image_captions([str(ann)], tmp_path, "skip", 3, skips)
    sampled = sorted(random.Random(0).sample(range(10), 3))
    assert len(entries) == 7 and skips.total == 3
    assert sorted(int(m.split("record ")[1].split(":")[0]) for m in
                  [skips.examples[k] for k in skips.examples]) == sampled[:1]  # one example per problem
    assert [e.captions[0] for e in entries] == [f"c{i}" for i in range(10) if i not in sampled]
    assert len(load_image_captions([str(ann)], tmp_path, "skip", False, SkipReport())) == 10  # nothing touched
