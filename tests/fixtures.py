"""Paths of the test fixtures the repository carries (`tests/data/`).

Every test reads its fixtures through these names, so `test_fixtures_live_in_the_repository`
can prove that none of them points outside the checkout (a user's clone has nothing beside
it).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
#: A small InternVideo2 stage-2 model in the official layout and the reference outputs.
TINY_REFERENCE = DATA / "internvideo2_tiny"
TINY_CHECKPOINT = TINY_REFERENCE / "checkpoint.pt"
TINY_CONFIG = TINY_REFERENCE / "config.json"
TINY_IO = TINY_REFERENCE / "io.npz"
#: Every key, shape and dtype of the official 1B stage-2 checkpoint.
KEYS_1B = DATA / "internvideo2_stage2_1b_keys.tsv"

ALL = (TINY_CHECKPOINT, TINY_CONFIG, TINY_IO, KEYS_1B)
