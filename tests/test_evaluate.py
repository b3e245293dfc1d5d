import torch

from vlpbench.evaluate import chance_metrics, rank_of_first_match, retrieval_metrics


def test_recall_at_k_on_a_hand_made_matrix():
    # 3 images, 2 captions each: texts 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2.
    text_to_image = torch.tensor([0, 0, 1, 1, 2, 2])
    i2t = torch.tensor([
        [0.9, 0.1, 0.8, 0.0, 0.0, 0.0],  # image 0: best caption (text 0) at rank 0
        [0.9, 0.8, 0.1, 0.7, 0.0, 0.0],  # image 1: texts 0, 1 outrank text 3 -> rank 2
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.1],  # image 2: text 4 at rank 4
    ])
    t2i = torch.tensor([
        [0.9, 0.1, 0.0],  # text 0 -> image 0 at rank 0
        [0.1, 0.9, 0.0],  # text 1 -> image 0 at rank 1
        [0.0, 0.9, 0.1],  # rank 0
        [0.5, 0.4, 0.9],  # rank 2
        [0.0, 0.1, 0.9],  # rank 0
        [0.9, 0.1, 0.0],  # rank 2
    ])
    m = retrieval_metrics(i2t, t2i, text_to_image)
    assert abs(m["txt_r1"] - 100 / 3) < 1e-4
    assert abs(m["txt_r5"] - 100.0) < 1e-9  # ranks 0, 2, 4 are all < 5
    assert abs(m["img_r1"] - 50.0) < 1e-9  # ranks 0,1,0,2,0,2
    assert abs(m["img_r5"] - 100.0) < 1e-9
    assert abs(m["r_mean"] - (m["txt_r_mean"] + m["img_r_mean"]) / 2) < 1e-9


def test_rank_of_first_match_uses_the_best_placed_match():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.9]])
    match = torch.tensor([[True, False, True, False]])
    assert rank_of_first_match(scores, match).tolist() == [2]


def test_chance_level():
    text_to_image = torch.arange(10).repeat_interleave(5)  # 10 images x 5 captions
    c = chance_metrics(text_to_image)
    assert abs(c["img_r1"] - 10.0) < 1e-9
    assert abs(c["txt_r1"] - 10.0) < 1e-9  # 5 of 50 texts
    assert abs(c["txt_r5"] - 100 * (1 - (45 * 44 * 43 * 42 * 41) / (50 * 49 * 48 * 47 * 46))) < 1e-9


def test_chance_level_is_defined_for_tiny_test_sets():
    # 2 images, texts 0,1 -> image 0 and text 2 -> image 1. TR@1: image 0 is hit by 2 of 3 texts (2/3),
    # image 1 by 1 of 3 (1/3): mean 50%. With K >= 3 candidates every ranking shows all of them: 100%.
    c = chance_metrics(torch.tensor([0, 0, 1]))
    assert abs(c["txt_r1"] - 50.0) < 1e-9 and c["txt_r5"] == c["txt_r10"] == 100.0
    assert c["img_r1"] == 50.0 and c["img_r5"] == c["img_r10"] == 100.0
    single = chance_metrics(torch.tensor([0]))  # one image, one caption: every ranking is right
    assert single["r_mean"] == 100.0


def test_recall_is_100_where_k_reaches_the_candidates():
    text_to_image = torch.tensor([0, 1])
    scores = torch.tensor([[0.1, 0.9], [0.9, 0.1]])  # both wrong at rank 1, right at rank 2
    m = retrieval_metrics(scores, scores, text_to_image)
    assert m["txt_r1"] == m["img_r1"] == 0.0
    assert m["txt_r5"] == m["txt_r10"] == m["img_r5"] == m["img_r10"] == 100.0
