"""webdataset shards: writing, counting, the exactly resumable stream, bad samples, the CLI path."""

import json
import random
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from vlpbench import pipeline
from vlpbench.config import ConfigError, config_from_dict
from vlpbench.data.datasets import DatasetError, SkipReport, load_image_captions, pairs_of
from vlpbench.data.loading import LoaderPlan, training_batches
from vlpbench.data.shards import (ShardStream, open_shards, raw_samples, read_manifest, shuffled, write_shards)
from vlpbench.data.sources import pair_files
from vlpbench.data.transforms import ImageTransform


def webdataset_config(tiny_config, **shards):
    return config_from_dict({**tiny_config, "data": {**tiny_config["data"], "source": "webdataset",
                                                     "shards": {"samples_per_shard": 5, "shuffle_buffer": 4, **shards}}})


@pytest.fixture
def stream_data(tiny_config):
    """The tiny embedded set (24 pairs) as 5 shards (5, 5, 5, 5, 4 pairs), with its collate."""
    cfg = webdataset_config(tiny_config)
    data = pipeline.open_pretrain(cfg, SkipReport(), log=lambda *_: None)
    return data, pipeline.Collate(pipeline.make_tokenizer(cfg, data.captions()), cfg.data.max_text_len)


def batch_ids(data, collate, plan: LoaderPlan, count: int) -> list[list[int]]:
    return [batch.image_ids.tolist() for _, batch in zip(range(count), training_batches(data.dataset, collate, plan))]


def test_shards_hold_the_json_pairs_in_order_with_their_counts(tiny_config, tmp_path):
    cfg = config_from_dict(tiny_config)
    source = pipeline.pretrain_annotations(cfg.data, log=lambda *_: None)
    entries = load_image_captions(source.ann_files, source.image_root, "error", True, SkipReport())
    manifest = write_shards(pair_files(entries), tmp_path / "shards", samples_per_shard=10, shuffle_seed=None)
    assert manifest["num_samples"] == 24 and [s["samples"] for s in manifest["shards"]] == [10, 10, 4]
    shards = open_shards(str(tmp_path / "shards" / manifest["pattern"]))
    written = [(json.loads(s["json"]), s) for shard in shards for s in raw_samples(shard.path)]
    assert [(m["caption"], m["match_id"]) for m, _ in written] == [(c, i) for _, c, i in pairs_of(entries)]
    assert all(s["png"] == e.image.read_bytes() for (_, s), (e, _, _) in zip(written, pairs_of(entries)))
    (tmp_path / "shards" / "manifest.json").unlink()  # counted from the tar headers instead
    assert [s.samples for s in open_shards(str(tmp_path / "shards" / manifest["pattern"]))] == [10, 10, 4]
    shuffled_order = pairs_of(entries)
    random.Random(0).shuffle(shuffled_order)  # the default: the pairs in the order seed 0 draws
    write_shards(pair_files(entries), tmp_path / "shuffled", samples_per_shard=10)
    written = [json.loads(s["json"]) for shard in open_shards(str(tmp_path / "shuffled" / "shard-{000000..000002}.tar"))
               for s in raw_samples(shard.path)]
    assert [(m["caption"], m["match_id"]) for m in written] == [(c, i) for _, c, i in shuffled_order]


def test_img2dataset_stats_files_give_the_counts(tmp_path):
    with tarfile.open(tmp_path / "00000.tar", "w"):
        pass
    (tmp_path / "00000_stats.json").write_text(json.dumps({"successes": 7, "failed_to_download": 3}))
    assert open_shards(str(tmp_path / "{00000..00000}.tar"))[0].samples == 7


def test_a_missing_shard_is_named(tmp_path):
    with tarfile.open(tmp_path / "00000.tar", "w"):
        pass
    with pytest.raises(DatasetError, match=r"data.shards.urls: .*00001.tar: shard not found"):
        open_shards(str(tmp_path / "{00000..00001}.tar"))
    with pytest.raises(DatasetError, match=r"the 1 shards of .* hold no sample with an image"):
        open_shards(str(tmp_path / "00000.tar"))


def test_shuffle_buffer_of_one_keeps_the_order_and_a_full_one_is_a_permutation():
    assert list(shuffled(iter(range(6)), 1, random.Random(0))) == list(range(6))
    expected = list(range(6))
    random.Random(3).shuffle(expected)  # nothing is emitted before the end: the buffer is shuffled whole
    assert list(shuffled(iter(range(6)), 6, random.Random(3))) == expected


@pytest.mark.parametrize("ranks", [1, 2])
def test_each_epoch_of_every_lane_reads_each_pair_once(stream_data, ranks):
    data, _ = stream_data
    stream: ShardStream = data.dataset
    seen = Counter()
    for lane in range(ranks):
        length = sum(shard.samples for shard in stream.epoch_shards(0, 0, lane, ranks))
        emitted = [sample for _, (_, sample) in zip(range(length), stream.emissions(0, lane, ranks, 0))]
        seen.update((s["__url__"], s["__key__"]) for s in emitted)
    assert len(seen) == 24 and set(seen.values()) == {1}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_continues_exactly(stream_data, workers):
    data, collate = stream_data
    full = batch_ids(data, collate, LoaderPlan(4, seed=0, num_workers=workers), 10)
    assert batch_ids(data, collate, LoaderPlan(4, seed=0, start_batch=3, num_workers=workers), 7) == full[3:]
    assert full != batch_ids(data, collate, LoaderPlan(4, seed=1, num_workers=workers), 10)


def test_ranks_read_disjoint_lanes(stream_data):
    data, collate = stream_data
    first = [batch_ids(data, collate, LoaderPlan(4, seed=0, rank=r, world_size=2), 4) for r in range(2)]
    assert all(len(b) == 2 for rank in first for b in rank)  # half of the global batch each
    ids = [i for rank in first for b in rank for i in b]
    assert len(ids) == 16 and len(set(ids)) == 16  # a lane's epoch holds 2 or 3 shards, at least 9 pairs


def test_more_lanes_than_shards_is_a_clear_error(stream_data):
    data, collate = stream_data
    with pytest.raises(DatasetError, match=r"5 shards for 6 loader lanes \(3 processes x 2 workers\)"):
        training_batches(data.dataset, collate, LoaderPlan(6, seed=0, world_size=3, num_workers=2))


def test_a_bad_image_in_a_shard_is_skipped_named_and_its_slot_filled(tiny_config, tmp_path):
    cfg = config_from_dict(tiny_config)
    source = pipeline.pretrain_annotations(cfg.data, log=lambda *_: None)
    entries = load_image_captions(source.ann_files, source.image_root, "error", True, SkipReport())[:4]
    broken = tmp_path / "broken.png"
    broken.write_bytes(entries[1].image.read_bytes()[:40])  # a truncated PNG
    entries[1].image = broken
    write_shards(pair_files(entries), tmp_path / "shards", samples_per_shard=4, shuffle_seed=None)
    stream = ShardStream(open_shards(str(tmp_path / "shards" / "shard-000000.tar")), ImageTransform(32), 1)
    tokenizer = pipeline.make_tokenizer(cfg, (c for e in entries for c in e.captions))
    batch = next(training_batches(stream, pipeline.Collate(tokenizer, 24), LoaderPlan(4, seed=0)))
    assert len(batch) == 4 and len(batch.skipped) == 1
    assert batch.skipped[0].startswith(f"{tmp_path / 'shards' / 'shard-000000.tar'}: sample 000000001: image cannot "
                                       "be decoded")
    first = batch.image_ids.tolist()
    assert first[1] == first[0]  # the copy of the first readable sample, so never its negative


def test_webdataset_source_settings_are_checked_at_load(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match=r"data.shards.urls: set, but data.source is albef_json"):
        config_from_dict({**tiny_config, "data": {**tiny_config["data"], "shards": {"urls": "x.tar"}}})
    pretrain = {"ann": str(tmp_path / "a.json")}
    with pytest.raises(ConfigError, match=r"data.source: webdataset reads data.shards.urls, which is unset"):
        config_from_dict({**tiny_config, "data": {**tiny_config["data"], "source": "webdataset",
                                                  "pretrain": pretrain}})
    with pytest.raises(ConfigError, match=r"model.unimodal: the uni-modal warm start reads the embedded"):
        config_from_dict({**tiny_config, "model": {**tiny_config["model"], "unimodal": {"text_steps": 5}},
                          "data": {**tiny_config["data"], "source": "webdataset", "shards": {"urls": "x.tar"}}})


def test_a_run_trains_and_evaluates_from_shards_the_cli_wrote(tiny_config, tmp_path, capsys):
    import yaml

    from vlpbench.cli import main
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(yaml.safe_dump(tiny_config))
    assert main(["data", "shard", str(experiment), str(tmp_path / "shards"), "--samples-per-shard", "6"]) == 0
    urls = str(tmp_path / "shards" / read_manifest(tmp_path / "shards")["pattern"])
    assert f"data.shards.urls={urls}" in capsys.readouterr().out
    assert main(["run", str(experiment), "-o", "data.source=webdataset", "-o", f"data.shards.urls={urls}"]) == 0
    results = json.loads(next(Path(tiny_config["output_dir"]).glob("tiny/*/results.json")).read_text())
    assert results["complete"] and results["train"]["steps"] == 4 and "itc" in results["retrieval"]
    assert results["train"]["skipped_samples"] == {"count": 0, "examples": []}
