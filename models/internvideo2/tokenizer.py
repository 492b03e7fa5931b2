"""`bert-large-uncased` WordPiece tokenization, as the reference evaluates it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

BERT_REPO = "bert-large-uncased"
#: Max tokens per query: 40 in the reference demo, 32 in most official evaluations.
DEFAULT_MAX_LENGTH = 40
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class TokenizerError(RuntimeError):
    """The tokenizer files cannot be found (e.g. offline with no local copy)."""


def load_tokenizer(name_or_path: str | os.PathLike = BERT_REPO, *, revision: str | None = None):
    """Load the BERT WordPiece tokenizer (lower case) from a local vocabulary or the hub.

    Args:
        name_or_path: a `vocab.txt` file, a directory holding one, or a hub repo id
            (default `bert-large-uncased`; its `vocab.txt` is fetched, or taken from the
            local hub cache when `HF_HUB_OFFLINE=1`).
        revision: hub revision to pin.

    Raises:
        TokenizerError: no vocabulary can be found (e.g. offline with no local copy).
    """
    from transformers import BertTokenizer

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
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def tokenize(
    tokenizer, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to `max_length` and truncate like the reference; returns ids and mask `[B, L]`."""
    if isinstance(texts, str):
        texts = [texts]
    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ValueError("query texts must be non-empty strings")
    enc = tokenizer(
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
