import pytest
import torch

from models.internvideo2 import InternVideo2Config, random_internvideo2
from models.internvideo2.tokenizer import TokenizerError, load_tokenizer, tokenize, write_vocab


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = write_vocab(tmp_path_factory.mktemp("tok") / "vocab.txt", ["a", "red", "square", "dog"])
    return load_tokenizer(vocab)


def test_tokenize_pads_to_max_length_lower_cases_and_truncates(tokenizer):
    ids, mask = tokenize(tokenizer, ["A RED Square", "dog " * 50], max_length=12)
    assert ids.shape == mask.shape == (2, 12)
    vocab = tokenizer.get_vocab()
    assert ids[0, :5].tolist() == [
        vocab["[CLS]"],
        vocab["a"],
        vocab["red"],
        vocab["square"],
        vocab["[SEP]"],
    ]
    assert mask[0].tolist() == [1] * 5 + [0] * 7
    assert ids[0, 5:].eq(vocab["[PAD]"]).all()
    assert mask[1].all() and ids[1, -1] == vocab["[SEP]"]


def test_empty_queries_rejected(tokenizer):
    with pytest.raises(ValueError):
        tokenize(tokenizer, ["  "])
    with pytest.raises(ValueError):
        tokenize(tokenizer, [])


def test_tokenizer_feeds_the_model(tokenizer):
    cfg = InternVideo2Config.tiny_random(vocab_size=len(tokenizer.get_vocab()))
    model = random_internvideo2(cfg)
    ids, mask = tokenize(tokenizer, ["a red square", "a dog"])
    with torch.inference_mode():
        emb, hidden = model.encode_text(ids, mask)
    assert emb.shape == (2, 512) and hidden.shape == (2, 40, 32)


def test_offline_without_local_copy_is_a_clear_error(monkeypatch, tmp_path, no_network):
    from huggingface_hub import constants

    # conftest sets HF_HUB_OFFLINE before huggingface_hub is imported; setting it here
    # would be too late (the hub reads it once, at import).
    assert constants.HF_HUB_OFFLINE
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # no local copy
    with pytest.raises(TokenizerError, match="local copy"):
        load_tokenizer("bert-large-uncased")
    assert no_network == []


def test_same_ids_as_transformers_bert_tokenizer(tmp_path):
    """The fast tokenizer splits text exactly like transformers' BertTokenizer, which the
    reference evaluation uses: punctuation, accents, case, unknown words, truncation."""
    from transformers import BertTokenizer

    words = ["a", "red", "square", "dog", "##s", "cafe", "run", "##ning", "!", ","]
    vocab = write_vocab(tmp_path / "vocab.txt", words)
    lines = vocab.read_text().splitlines()
    reference = BertTokenizer(vocab={w: i for i, w in enumerate(lines)}, do_lower_case=True)
    texts = [
        "A RED Square!",
        "dogs, Café running",
        "zebra\tquokka  \n naïve",
        "dog " * 60,
        "  a  ",
    ]
    ours_ids, ours_mask = tokenize(load_tokenizer(vocab), texts, max_length=16)
    enc = reference(
        texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt"
    )
    assert ours_ids.tolist() == enc["input_ids"].tolist()
    assert ours_mask.tolist() == enc["attention_mask"].tolist()
