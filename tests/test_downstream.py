"""Downstream pipelines: the pieces with hand-checkable values (VQA score, answer ranking, box score,
IoU, parameter sharing, position-embedding resampling, Grad-CAM's attention), and every task
fine-tuned end to end from a pre-trained run for every method."""

import json
import math

import pandas as pd
import pytest
import torch
from conftest import REGISTERED_METHODS, tiny_method

from vlpbench.config import ConfigError, config_from_dict
from vlpbench.data.datasets import DatasetError
from vlpbench.downstream.vqa import answer_scores
from vlpbench.gradcam import box_iou, box_scores, cross_attention_gradcam
from vlpbench.io import write_json
from vlpbench.losses import multi_positive_contrastive_loss, negative_sampling_weights
from vlpbench.pipeline import build_method
from vlpbench.registry import available_tasks, get_method, get_task
from vlpbench.zoo.answer_decoder import rank_candidates
from vlpbench.zoo.layers import MultiHeadAttention, record_attention
from vlpbench.zoo.tokenizer import train_wordpiece
from vlpbench.zoo.vision import create_vision_encoder

ALL_TASKS = available_tasks()  # every registered task: a new one is covered without being listed
METHODS = {name: tiny_method(name) for name in REGISTERED_METHODS}


def downstream_config(tiny_config, method: str, tasks=ALL_TASKS, **task_overrides) -> dict:
    cfg = {**tiny_config, "method": METHODS[method]}
    method_config = get_method(method).config_class(**METHODS[method])
    if not method_config.capabilities().contrastive_embedding:
        cfg["eval"] = {"retrieval": {"k_test": "all", "batch_size": 8}}
    task = {"train": {"steps": 2, "batch_size": 4, "lr": 1e-4, "log_every": 1}, "data": {"max_test_records": 6},
            "eval_batch_size": 4}
    cfg["downstream"] = {"tasks": tasks, **{t: dict(task) for t in ALL_TASKS}}
    cfg["downstream"]["grounding"]["gradcam_layer"] = 0
    if not method_config.capabilities().single_stream:  # NLVR2's replicated design needs ALBEF's single stream
        cfg["downstream"]["nlvr2"]["design"] = "pair"
    for key, value in task_overrides.items():
        cfg["downstream"][key] = {**cfg["downstream"][key], **value}
    return cfg


def run(cfg: dict):
    from vlpbench.experiment import run_experiment
    from vlpbench.rundir import RunDir
    config = config_from_dict(cfg)
    directory = RunDir.create(config)
    return directory, run_experiment(config, directory, log=lambda *a: None)


# ---- hand-checkable pieces ----

def test_vqa_soft_score_on_hand_made_cases():
    assert answer_scores(["red"]) == {"red": 1.0}  # a single answer is exact match
    assert answer_scores(["red", "red", "blue"]) == pytest.approx({"red": 2 / 3, "blue": 1 / 3})
    assert answer_scores(["two"] * 4 + ["three"]) == pytest.approx({"two": 1.0, "three": 1 / 3})  # capped at 1


def test_answer_ranking_picks_the_best_full_sequence_among_the_first_token_filter():
    first = torch.log(torch.tensor([[0.5, 0.3, 0.2],     # question 0
                                    [0.1, 0.2, 0.7]]))   # question 1
    full = torch.tensor([[-3.0, -1.0, -0.5],             # full-sequence log-likelihood of each candidate
                         [-0.1, -2.0, -1.5]])

    def sequence_scores(questions, candidates):
        return full[questions, candidates]
    # k = 2 keeps candidates {0, 1} for q0 (best full: 1) and {2, 1} for q1 (best full: 2)
    assert rank_candidates(first, 2, sequence_scores).tolist() == [1, 2]
    # k = 3 sees every candidate: the global best full sequence wins
    assert rank_candidates(first, 3, sequence_scores).tolist() == [2, 0]
    # k = 1 keeps only the most likely first token
    assert rank_candidates(first, 1, sequence_scores).tolist() == [0, 2]


def test_box_score_sums_the_map_over_the_box_divided_by_the_root_of_its_area():
    heat = torch.arange(16, dtype=torch.float32).view(4, 4)  # row-major 0..15
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0],   # pixels (0,0),(1,0),(0,1),(1,1): 0 + 1 + 4 + 5
                          [2.0, 2.0, 2.0, 2.0],   # 10 + 11 + 14 + 15
                          [1.0, 0.0, 1.0, 4.0]])  # column 1: 1 + 5 + 9 + 13
    scores = box_scores(heat, boxes, alpha=0.5)
    assert scores.tolist() == pytest.approx([10 / 2, 50 / 2, 28 / 2])
    assert box_scores(heat, boxes[:1], alpha=0.0).item() == pytest.approx(10)


def test_iou_and_the_hit_rule():
    truth = torch.tensor([0.0, 0.0, 4.0, 4.0])
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 0.0, 4.0, 4.0], [0.0, 0.0, 4.0, 2.0], [10.0, 10.0, 1.0, 1.0]])
    iou = box_iou(boxes, truth)
    assert iou.tolist() == pytest.approx([1.0, 8 / 24, 0.5, 0.0])
    assert (iou >= 0.5).tolist() == [True, False, True, False]


def test_multi_positive_itc_hand_value():
    # 2 images; texts 0 and 1 belong to image 0, text 2 to image 1; temperature 1, unit features
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[True, True, False], [False, False, True]])
    loss = multi_positive_contrastive_loss(image, text, positives, 1.0)
    e = math.e
    i2t = (-(0.5 * math.log(e / (2 * e + 1)) * 2)  # image 0: targets 1/2, 1/2
           - math.log(e / (e + 2))) / 2              # image 1: its one text
    t2i = -math.log(e / (e + 1))                     # every text: its image against the other
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_itm_negatives_are_never_drawn_from_the_same_image():
    positives = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    weights = negative_sampling_weights(torch.zeros(4, 4), 4, hard=True, positives=positives)
    assert (weights[positives] == 0).all() and (weights[~positives] > 0).all()


def test_explicit_attention_for_gradcam_equals_the_fused_kernel():
    attention = MultiHeadAttention(16, 4, kv_width=8).eval()
    x, context = torch.randn(2, 5, 16), torch.randn(2, 7, 8)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    fused = attention(x, context, attn_mask=mask)
    with record_attention(attention) as recorded:
        explicit = attention(x, context, attn_mask=mask)
    torch.testing.assert_close(explicit, fused)
    probs = recorded[0]
    assert probs.shape == (2, 4, 5, 7) and (probs[1, ..., 5:] == 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 5))
    assert attention.recorded is None  # recording ends with the block


def test_position_embeddings_resample_to_a_new_resolution_and_stay_put_at_the_same_one():
    encoder = create_vision_encoder("vit_mini", image_size=32)
    before = encoder.vit.pos_embed.detach().clone()
    encoder.set_image_size(32)
    assert torch.equal(encoder.vit.pos_embed, before)
    with torch.no_grad():  # a constant patch embedding stays constant under bicubic resampling
        encoder.vit.pos_embed[:, 1:] = 0.25
    encoder.set_image_size(64)
    assert encoder.vit.pos_embed.shape == (1, 1 + 64, 128) and encoder.num_patches == 64
    torch.testing.assert_close(encoder.vit.pos_embed[:, 0], before[:, 0])  # [CLS] untouched
    torch.testing.assert_close(encoder.vit.pos_embed[:, 1:], torch.full((1, 64, 128), 0.25))
    assert encoder(torch.randn(2, 3, 64, 64)).states.shape == (2, 65, 128)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        encoder.set_image_size(60)


def tiny_method(tiny_config, name: str):
    cfg = config_from_dict({**tiny_config, "method": METHODS[name]})
    tokenizer = train_wordpiece(["a red circle on the left", "two blue squares"], 200)
    return build_method(cfg, tokenizer).eval(), tokenizer


@pytest.mark.parametrize("sharing, shared", [("key_value", {"key", "value"}), ("cross_attention", {"query", "key",
                                             "value", "out"}), ("none", set())])
def test_nlvr2_replicated_blocks_share_exactly_what_the_switch_says(tiny_config, sharing, shared):
    from vlpbench.downstream.nlvr2 import ReplicatedNLVR2
    method, _ = tiny_method(tiny_config, "albef")
    model = ReplicatedNLVR2(method, sharing)
    for one, two in zip(model.pair_fusion.first, model.pair_fusion.second):
        for part in ("query", "key", "value", "out"):
            assert (getattr(one.cross_attn, part).weight is getattr(two.cross_attn, part).weight) == (part in shared)
        assert one.self_attn.query.weight is not two.self_attn.query.weight
        assert torch.equal(one.self_attn.query.weight, two.self_attn.query.weight)  # same pre-trained start
    assert model.pair_fusion.first[0] is method.fusion_blocks()[0]  # the first block is the pre-trained one
    per_block, layers = len(list(model.pair_fusion.first[0].parameters())), len(model.pair_fusion.first)
    shared_per_layer = 2 * len(shared)  # a weight and a bias per shared projection
    assert len(list(model.pair_fusion.parameters())) == layers * (2 * per_block - shared_per_layer)


def test_nlvr2_sharing_all_applies_one_block_twice(tiny_config):
    from vlpbench.downstream.nlvr2 import ReplicatedNLVR2
    method, _ = tiny_method(tiny_config, "albef")
    assert ReplicatedNLVR2(method, "all").pair_fusion.second is method.fusion_blocks()


def test_gradcam_maps_cover_the_patch_grid_and_a_layer_out_of_range_is_named(tiny_config):
    method, tokenizer = tiny_method(tiny_config, "albef")
    ids, mask = tokenizer(["a red circle", "two blue squares on the left"], 24)
    maps = cross_attention_gradcam(method, torch.randn(2, 3, 32, 32), ids, mask, layer=0)
    assert maps.shape == (2, 4, 4) and (maps >= 0).all() and maps.sum() > 0
    with pytest.raises(ConfigError, match="gradcam_layer: 5, but 'albef' has 2 text-to-image cross-attention"):
        cross_attention_gradcam(method, torch.randn(2, 3, 32, 32), ids, mask, layer=5)


def test_gradcam_on_a_layer_the_score_never_reads_is_a_clear_error(tiny_config):
    # LightVLP's gate reads the image side; the last text-side cross layer feeds no later layer
    method, tokenizer = tiny_method(tiny_config, "lightvlp")
    ids, mask = tokenizer(["a red circle"], 24)
    with pytest.raises(ConfigError, match="does not influence its matching score"):
        cross_attention_gradcam(method, torch.randn(1, 3, 32, 32), ids, mask, layer=-1)


# ---- configuration and data boundaries ----

@pytest.mark.parametrize("method", ["lightvlp", "vilta"])
def test_replicated_nlvr2_is_refused_at_config_load_for_two_stream_fusion(tiny_config, method):
    cfg = downstream_config(tiny_config, method, tasks=["nlvr2"], nlvr2={"design": "replicated"})
    with pytest.raises(ConfigError, match="downstream.nlvr2.design: 'replicated' .* use design: pair"):
        config_from_dict(cfg)


def test_unknown_task_and_repeated_task_are_config_errors(tiny_config):
    with pytest.raises(ConfigError, match="downstream.tasks"):
        config_from_dict({**tiny_config, "downstream": ["vqa", "captioning"]})
    with pytest.raises(ConfigError, match="listed twice"):
        config_from_dict({**tiny_config, "downstream": ["vqa", "vqa"]})


def test_a_bad_vqa_record_names_the_file_the_record_and_the_problem(tiny_config, tmp_path):
    from vlpbench.data.embedded import ensure_embedded_dataset
    cfg = downstream_config(tiny_config, "albef", tasks=["vqa"])
    folder = ensure_embedded_dataset(config_from_dict(cfg).data.embedded, log=lambda *a: None)
    records = json.loads((folder / "vqa_train.json").read_text())
    records[3] = {k: v for k, v in records[3].items() if k != "answer"}
    bad = tmp_path / "vqa_bad.json"
    bad.write_text(json.dumps(records))
    cfg["downstream"]["vqa"]["data"] = {"train": {"ann": str(bad), "image_root": str(folder)}}
    with pytest.raises(DatasetError, match=r"vqa_bad.json: record 3: 'answer' must be .*downstream.vqa.data.train"):
        run(cfg)
    cfg["data"]["on_bad_record"] = "skip"
    _, results = run(cfg)
    assert results["downstream"]["vqa"]["skipped_records"]["total"] == 1


def test_vqa_in_albefs_released_layout_with_vg_qa_and_a_test_split_without_answers(tiny_config, tmp_path):
    import shutil
    from vlpbench.data.embedded import ensure_embedded_dataset
    cfg = downstream_config(tiny_config, "albef", tasks=["vqa"])
    folder = ensure_embedded_dataset(config_from_dict(cfg).data.embedded, log=lambda *a: None)
    train = [{**r, "dataset": "vqa", "question_id": i} for i, r in
             enumerate(json.loads((folder / "vqa_train.json").read_text()))]
    (tmp_path / "vg" / "image").mkdir(parents=True)
    vg = []
    for i, record in enumerate(train[:2]):  # vg_qa.json: one answer, images under vg_root
        shutil.copy(folder / record["image"], tmp_path / "vg" / "image" / f"{i}.png")
        vg.append({"dataset": "vg", "image": f"image/{i}.png", "question": record["question"],
                   "answer": record["answer"][0] if isinstance(record["answer"], list) else record["answer"]})
    test = [{"question_id": 1000 + i, "image": r["image"], "question": r["question"], "dataset": "vqa"}
            for i, r in enumerate(json.loads((folder / "vqa_test.json").read_text())[:5])]
    for name, records in (("vqa_train.json", train), ("vg_qa.json", vg), ("vqa_test.json", test)):
        (tmp_path / name).write_text(json.dumps(records))
    cfg["downstream"]["vqa"]["data"] = {
        "train": {"ann": [str(tmp_path / "vqa_train.json"), str(tmp_path / "vg_qa.json")], "image_root": str(folder)},
        "test": {"ann": str(tmp_path / "vqa_test.json"), "image_root": str(folder)}}
    with pytest.raises(DatasetError, match=r"vg_qa.json: record 0: a 'dataset': 'vg' record's image is under "
                                           r"downstream.vqa.vg_image_root, which is unset"):
        run(cfg)
    cfg["downstream"]["vqa"]["vg_image_root"] = str(tmp_path / "vg")
    config = config_from_dict(cfg)
    task = get_task("vqa")(config, config.downstream.vqa, None, 16, lambda *a: None)
    assert task.training_scores(task.train_records[-1]) == {vg[1]["answer"]: 0.5}  # ALBEF's VG weight
    directory, results = run(cfg)
    vqa = results["downstream"]["vqa"]
    assert vqa["num_test"] == 5 and vqa["num_test_scored"] == 0 and vqa["metrics"] == {}
    answers = json.loads((directory.path / "downstream" / "vqa" / "vqa_result.json").read_text())
    assert [a["question_id"] for a in answers] == [1000, 1001, 1002, 1003, 1004]
    assert all(a["answer"] in task.answers for a in answers)


def test_retrieval_evaluates_on_another_datasets_test_split_for_zero_shot_transfer(tiny_config, tmp_path):
    from vlpbench.data.embedded import ensure_embedded_dataset
    cfg = downstream_config(tiny_config, "albef", tasks=["retrieval"])
    folder = ensure_embedded_dataset(config_from_dict(cfg).data.embedded, log=lambda *a: None)
    other = tmp_path / "other_test.json"  # another dataset's test split (ALBEF format), here 3 images
    other.write_text(json.dumps(json.loads((folder / "retrieval_test.json").read_text())[:3]))
    cfg["downstream"]["retrieval"]["data"] = {"test": {"ann": str(other), "image_root": str(folder)},
                                              "max_test_records": 6}
    _, results = run(cfg)
    retrieval = results["downstream"]["retrieval"]
    assert retrieval["test"] == [str(other)] and retrieval["num_test"] == 3


@pytest.mark.parametrize("task_name", ALL_TASKS)
def test_fine_tuning_images_are_augmented_by_their_samples_seed(tiny_config, task_name):
    augment = {"crop_scale_min": 0.3, "hflip": True, "randaugment": {"num_ops": 3}}
    cfg = config_from_dict(downstream_config(tiny_config, "albef", tasks=[task_name], **{task_name: {"augment": augment}}))
    task = get_task(task_name)(cfg, getattr(cfg.downstream, task_name), None, 16, lambda *a: None)
    data = task.train_dataset()
    images = [data[(0, seed)][0] for seed in (1, 1, 2)]
    assert torch.equal(images[0], images[1]) and not torch.equal(images[0], images[2])
    plain = config_from_dict(downstream_config(tiny_config, "albef", tasks=[task_name]))
    unaugmented = get_task(task_name)(plain, getattr(plain.downstream, task_name), None, 16, lambda *a: None)
    assert torch.equal(unaugmented.train_dataset()[(0, 1)][0], unaugmented.train_dataset()[(0, 2)][0])


# ---- end to end ----

@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_task_fine_tunes_and_evaluates_for_every_method(tiny_config, method):
    directory, results = run(downstream_config(tiny_config, method))
    down = results["downstream"]
    assert list(down) == ALL_TASKS
    for task, result in down.items():
        assert result["train"]["steps"] == 2 and result["num_test"] > 0, task
        for metric, value in result["metrics"].items():
            assert 0.0 <= value <= 100.0 and metric in result["baselines"]["chance"], (task, metric)
    table = (directory.path / "downstream.csv").read_text().splitlines()
    assert table[0].startswith("task,metric,value,chance")
    assert {line.split(",")[0] for line in table[1:]} == set(ALL_TASKS)
    assert json.loads((directory.path / "results.json").read_text())["downstream"].keys() == down.keys()


def test_vqa_classification_head_and_a_finished_task_is_not_run_again(tiny_config, tmp_path, capsys):
    from vlpbench.cli import main
    cfg = downstream_config(tiny_config, "albef", tasks=["vqa"], vqa={"head": "classification"})
    directory, results = run(cfg)
    assert results["downstream"]["vqa"]["head"] == "classification"
    before = (directory.path / "downstream" / "vqa" / "results.json").read_text()
    settings = tmp_path / "settings.yaml"  # another experiment's task settings (--settings)
    task = cfg["downstream"]["snli_ve"]
    settings.write_text(json.dumps({"downstream": {"vqa": cfg["downstream"]["vqa"],  # vqa as it was trained
                                                   "snli_ve": {**task, "train": {**task["train"], "steps": 1}}}}))
    assert main(["downstream", str(directory.path), "--tasks", "vqa,snli_ve", "--settings", str(settings)]) == 0
    assert (directory.path / "downstream" / "vqa" / "results.json").read_text() == before
    assert json.loads((directory.path / "results.json").read_text())["downstream"]["snli_ve"]["train"]["steps"] == 1
    interrupted = json.loads((directory.path / "results.json").read_text())  # stopped before recording
    write_json(directory.path / "results.json", {k: v for k, v in interrupted.items() if k != "downstream"})
    assert main(["downstream", str(directory.path), "--tasks", "snli_ve", "--settings", str(settings)]) == 0
    table = pd.read_csv(directory.path / "downstream.csv")
    assert set(table.task) == {"vqa", "snli_ve"}
    assert main(["downstream", str(directory.path), "-o", "train.steps=5"]) == 2
    assert "only downstream.* settings" in capsys.readouterr().err


def test_without_pretraining_tasks_start_from_the_initial_weights(tiny_config, tmp_path, capsys):
    from vlpbench.cli import main
    cfg = downstream_config(tiny_config, "albef", tasks=["snli_ve"])
    (tmp_path / "exp.yaml").write_text(json.dumps(cfg))
    assert main(["run", str(tmp_path / "exp.yaml"), "-o", "pretrain=false"]) == 0
    out = capsys.readouterr().out
    assert "no pre-training (pretrain: false)" in out and "snli_ve" in out.split("downstream tasks:")[1]
    directory, results = run({**cfg, "pretrain": False})
    assert results["train"]["steps"] == 0 and results["train"]["pretrain"] is False
    assert [p.name for p in directory.checkpoint_paths()] == ["step_00000000.pt"]
    assert results["downstream"]["snli_ve"]["train"]["steps"] == 2
