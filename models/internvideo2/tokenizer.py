"""`bert-large-uncased` WordPiece tokenization, as the reference evaluates it.

The Rust `tokenizers` library does the work: it imports in milliseconds, where
`transformers`' `BertTokenizer` costs the first query most of a second, and gives the same
ids (basic tokenization with lower-casing and accent stripping, then WordPiece; checked
against `BertTokenizer` in the tests).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BERT_REPO = "bert-large-uncased"
#: Max tokens per query: 40 in the reference demo, 32 in most official evaluations.
DEFAULT_MAX_LENGTH = 40
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
#: Words of the tiny test models' fixed vocabulary (the sample catalog's captions); any other
#: word is spelled with single-letter pieces. Fixed, so a query's token ids never depend on
#: what a catalog holds.
TINY_VOCAB_WORDS = (
    *["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan", "pink"],
    *["square", "circle", "triangle", "left", "right", "up", "down"],
    *["moving", "on", "the", "background", "video", "of", "and", "with"],
)


class TokenizerError(RuntimeError):
    """The tokenizer files cannot be found (e.g. offline with no local copy)."""


def load_tokenizer(name_or_path: str | os.PathLike = BERT_REPO, *, revision: str | None = None):
    """Load the BERT WordPiece tokenizer (lower case) from a local vocabulary or the hub.

    Returns a `tokenizers.BertWordPieceTokenizer`, for :func:`tokenize`.

    Args:
        name_or_path: a `vocab.txt` file, a directory holding one, or a hub repo id
            (default `bert-large-uncased`; its `vocab.txt` is fetched, or taken from the
            local hub cache when `HF_HUB_OFFLINE=1`).
        revision: hub revision to pin.

    Raises:
        TokenizerError: no vocabulary can be found (e.g. offline with no local copy).
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "vocab.txt"
    if not path.is_file():
        if text.startswith((".", "/", "~")) or (path.parent.is_dir() and path.suffix == ".txt"):
            raise TokenizerError(f"no WordPiece vocabulary at {text!r}")
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(text, "vocab.txt", revision=revision))
        except Exception as exc:
            raise TokenizerError(
                f"cannot load the tokenizer {text!r} ({type(exc).__name__}). Offline machines "
                "need a local copy: pass the directory holding bert-large-uncased's vocab.txt "
                "(e.g. --tokenizer /models/bert-large-uncased)."
            ) from exc
    words = path.read_text(encoding="utf-8").splitlines()
    vocab = {w: i for i, w in enumerate(words) if w}
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise TokenizerError(f"{path} lacks special tokens {missing}: not a BERT vocabulary")
    from tokenizers import BertWordPieceTokenizer

    return BertWordPieceTokenizer(vocab, lowercase=True)


def tokenize(
    tokenizer, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to `max_length` and truncate like the reference; returns ids and mask `[B, L]`."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError("query texts must be non-empty strings")
    if hasattr(tokenizer, "encode_batch"):  # a `tokenizers` tokenizer (load_tokenizer's)
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(length=max_length, pad_id=tokenizer.token_to_id("[PAD]"))
        encodings = tokenizer.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask
    enc = tokenizer(  # a Hugging Face tokenizer passed by the caller
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return enc["input_ids"], enc["attention_mask"]


def write_vocab(path: str | os.PathLike, words: Iterable[str]) -> Path:
    """Write a small WordPiece vocabulary (special tokens, letters, digits, `words`).

    For tests and the tiny random model; the real model needs bert-large-uncased's vocab.
    """
    pieces = list(SPECIAL_TOKENS)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces += list(chars) + [f"##{c}" for c in chars]
    seen = set(pieces)
    for w in words:
        w = w.lower().strip()
        if w and w not in seen:
            seen.add(w)
            pieces.append(w)
    out = Path(path)
    out.write_text("\n".join(pieces) + "\n")
    return out


def tiny_tokenizer():
    """WordPiece tokenizer of the tiny test model: :data:`TINY_VOCAB_WORDS` plus letters."""
    with tempfile.TemporaryDirectory(prefix="vidcat-vocab-") as tmp:
        return load_tokenizer(write_vocab(os.path.join(tmp, "vocab.txt"), TINY_VOCAB_WORDS))
