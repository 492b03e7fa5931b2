"""Re-ranking with the matching head: stored vs recomputed vision tokens, fallbacks."""

from __future__ import annotations

import logging

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from models.internvideo2.tokenizer import tiny_tokenizer, tokenize
from pipeline import schema
from pipeline.decode import DecodeConfig, DecodeStage
from pipeline.embed import EmbedConfig, EmbedStage
from pipeline.models import ModelSpec
from pipeline.query import CatalogSearch
from pipeline.rerank import (
    CANDIDATE_COLUMNS,
    RerankConfig,
    Reranker,
    decode_tokens,
    match_scores,
    order_by_match,
    read_stored_tokens,
)
from pipeline.runner import RunConfig
from pipeline.runs import RunFiles
from pipeline.sample_catalog import make_sample_catalog
from pipeline.sink import LanceSink, SinkConfig

SPEC = ModelSpec(model="tiny-random")
QUERY = "a red circle moving up on a blue background"
META = (pa.field("caption", pa.string()), pa.field("category", pa.string()))
TOKENS_SHAPE = (1 + 49 * 4, 64)  # tiny model, T = 4


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def bf16_bytes(t: torch.Tensor) -> bytes:
    return t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()


@pytest.fixture(scope="module")
def model():
    return SPEC.build("cpu", torch.float32)


@pytest.fixture(scope="module")
def text_features(model):
    ids, mask = tokenize(tiny_tokenizer(), [QUERY])
    with torch.inference_mode():
        emb, hidden = model.encode_text(ids, mask)
    return emb[0].numpy(), hidden, mask


def planted_batch(n: int, seed: int, tokens: dict[str, torch.Tensor] | None = None) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = [f"p{i}" for i in range(n)]
    batch = pa.table(
        {
            schema.VIDEO_ID: ids,
            schema.CLIP_INDEX: pa.array([0] * n, pa.int32()),
            schema.CLIP_START_S: [0.0] * n,
            schema.CLIP_END_S: [1.0] * n,
            schema.URI: [f"/nonexistent/{v}.mp4" for v in ids],
            schema.STATUS: ["ok"] * n,
            schema.EMBEDDING: schema.fixed_size_list(unit(rng.normal(size=(n, 512)))),
            schema.MODEL: [SPEC.identity()] * n,
            schema.SIGNATURE: ["planted"] * n,
            schema.NUM_FRAMES: pa.array([4] * n, pa.int32()),
            schema.FRAME_INDICES: pa.array([list(range(4))] * n, pa.list_(pa.int32())),
            "caption": ["clip"] * n,
            "category": ["sports" if i % 2 else "news" for i in range(n)],
        }
    )
    if tokens is not None:
        raw = [bf16_bytes(tokens[f"{v}#00000"]) for v in ids]
        batch = batch.append_column(schema.VISION_TOKENS, pa.array(raw, pa.large_binary()))
        shapes = pa.array([list(TOKENS_SHAPE)] * n, pa.list_(pa.int32(), 2))
        batch = batch.append_column(schema.VISION_TOKENS_SHAPE, shapes)
    return batch


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """10 random clips; the `stored` table also has random bf16 vision tokens for each."""
    db = str(tmp_path_factory.mktemp("rerank") / "db")
    gen = torch.Generator().manual_seed(0)
    tokens = {f"p{i}#00000": torch.randn(TOKENS_SHAPE, generator=gen).bfloat16() for i in range(10)}
    with LanceSink(SinkConfig(db, "stored", metadata_fields=META, store_vision_tokens=True)) as s:
        s.write(planted_batch(10, 1, tokens))
    with LanceSink(SinkConfig(db, "bare", metadata_fields=META)) as s:
        s.write(planted_batch(10, 1))
    with LanceSink(SinkConfig(db, "partial", metadata_fields=META, store_vision_tokens=True)) as s:
        s.write(planted_batch(10, 1, tokens))
    side = lancedb.connect(db).open_table("partial_vision_tokens")
    side.delete("clip_id = 'p0#00000'")
    side.update(where="clip_id = 'p1#00000'", values={schema.SIGNATURE: "older"})
    return db, tokens


def test_rerank_orders_by_the_match_logit(planted, model, text_features):
    db, tokens = planted
    search = CatalogSearch(db, "stored", model=SPEC)
    cosine = search.text(QUERY, k=10)
    out = search.text(QUERY, k=6, rerank=True, rerank_k=10)
    assert search.reranker.last_stats["source"] == "stored"
    _, hidden, mask = text_features
    ids = cosine["clip_id"].to_pylist()
    with torch.inference_mode():
        stacked = torch.stack([tokens[c].float() for c in ids])
        direct = model.match_logits(hidden.expand(10, -1, -1), mask.expand(10, -1), stacked)[:, 1]
    order = np.argsort(-direct.numpy(), kind="stable")[:6]
    assert out["clip_id"].to_pylist() == [ids[i] for i in order]
    np.testing.assert_allclose(out["rerank_score"].to_numpy(), direct.numpy()[order], atol=1e-5)
    assert out["clip_id"].to_pylist() != ids[:6]  # the re-ranking did change the order
    assert out.column_names[-1] == "rerank_score" and "score" in out.column_names
    # Only the top rerank_k by cosine are candidates; a filter applies before the search.
    top3 = search.text(QUERY, k=3, rerank=True, rerank_k=3)
    assert set(top3["clip_id"].to_pylist()) == set(ids[:3])
    sports = search.text(QUERY, k=4, rerank=True, where="category = 'sports'")
    assert set(sports["category"].to_pylist()) == {"sports"} and len(sports) == 4


def test_unscored_candidates_keep_their_cosine_order(planted, caplog):
    db, _ = planted
    search = CatalogSearch(db, "bare", model=SPEC)  # no side table, and URIs that do not exist
    cosine = search.text(QUERY, k=5)["clip_id"].to_pylist()
    with caplog.at_level(logging.WARNING, logger="pipeline.rerank"):
        auto = search.text(QUERY, k=5, rerank=True, rerank_k=8)
    assert search.reranker.last_stats == {
        **search.reranker.last_stats,
        "source": "recompute",
        "scored": 0,
        "unscored": 8,
    }
    assert auto["clip_id"].to_pylist() == cosine and auto["rerank_score"].null_count == 5
    # Rows of another model/decode signature are not re-decoded; nothing is dropped.
    assert "was embedded under signature planted" in caplog.text
    assert "null rerank_score" in caplog.text
    forced = CatalogSearch(db, "bare", model=SPEC, rerank_tokens="stored")
    out = forced.text(QUERY, k=5, rerank=True)
    assert out["clip_id"].to_pylist() == cosine and forced.reranker.last_stats["source"] == "stored"


def test_auto_recomputes_unless_every_candidate_has_matching_stored_tokens(planted, caplog):
    db, _ = planted
    search = CatalogSearch(db, "partial", model=SPEC)
    candidates = search.text(QUERY, k=10)
    rows = candidates.append_column(schema.SIGNATURE, pa.array(["planted"] * 10))
    found, missing = read_stored_tokens(search._get_tokens_table(), rows)
    assert sorted(missing) == ["p0#00000", "p1#00000"] and len(found) == 8
    with caplog.at_level(logging.INFO, logger="pipeline.rerank"):
        out = search.text(QUERY, k=10, rerank=True, rerank_k=10)
    assert "2 of 10 candidates lack stored tokens: recomputing all" in caplog.text
    assert search.reranker.last_stats["source"] == "recompute"  # fake URIs: nothing scored
    assert out["clip_id"].to_pylist() == candidates["clip_id"].to_pylist()
    forced = CatalogSearch(db, "partial", model=SPEC, rerank_tokens="stored")
    out = forced.text(QUERY, k=10, rerank=True, rerank_k=10)
    assert out["rerank_score"].null_count == 2
    assert sorted(out["clip_id"].to_pylist()[-2:]) == ["p0#00000", "p1#00000"]


def test_order_by_match_puts_unscored_last():
    rows = pa.table({schema.CLIP_ID: ["a", "b", "c", "d"], "score": [0.9, 0.8, 0.7, 0.6]})
    out = order_by_match(rows, {"b": 1.0, "d": 3.0}, k=3)
    assert out[schema.CLIP_ID].to_pylist() == ["d", "b", "a"]
    assert out["rerank_score"].to_pylist() == [3.0, 1.0, None]
    # A NaN logit is no score (it sorted unpredictably among the scored ones).
    nan = order_by_match(rows, {"a": 1.0, "c": float("nan"), "d": 2.0}, k=4)
    assert nan[schema.CLIP_ID].to_pylist() == ["d", "a", "b", "c"]
    assert nan["rerank_score"].to_pylist() == [2.0, 1.0, None, None]


def test_tokens_round_trip_and_batching(model, text_features):
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(TOKENS_SHAPE, generator=gen).bfloat16()
    assert torch.equal(decode_tokens(bf16_bytes(t), TOKENS_SHAPE), t)
    with pytest.raises(ValueError, match="do not hold"):
        decode_tokens(bf16_bytes(t)[:-2], TOKENS_SHAPE)
    _, hidden, mask = text_features
    clips = [torch.randn(TOKENS_SHAPE, generator=gen) for _ in range(5)]
    np.testing.assert_allclose(
        match_scores(model, hidden, mask, clips, clips_per_call=2),
        match_scores(model, hidden, mask, clips, clips_per_call=16),
        atol=1e-5,
    )


# ---- real videos: the pipeline's decode + embed, then both token sources --------------
@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """6 sample videos of 2.4 s → two 1-s clips each, embedded with stored tokens, plus the
    run config the pipeline writes (so a searcher finds the decode settings itself)."""
    root = tmp_path_factory.mktemp("catalog")
    manifest = make_sample_catalog(
        str(root), num_videos=6, seconds=2.4, width=64, height=48, workers=1
    )
    decode = DecodeConfig(clip_seconds=1.0, allowed_roots=(str(root),), base_dir=str(root))
    embed = EmbedConfig(
        model=SPEC, store_vision_tokens=True, signature_extra=decode.signature_inputs()
    )
    rows = EmbedStage(embed)(DecodeStage(decode).decode_batch(pq.read_table(manifest)))
    assert set(rows[schema.STATUS].to_pylist()) == {"ok"} and len(rows) == 12
    db = str(root / "db")
    config = SinkConfig(db, metadata_fields=META, store_vision_tokens=True)
    with LanceSink(config) as sink:
        sink.write(rows)
    # What the runner writes: the resolved config (roots and base dir filled in).
    run = RunConfig(
        manifest=manifest,
        db=db,
        allowed_roots=(str(root),),
        decode=decode,
        embed=EmbedConfig(model=SPEC),
    )
    RunFiles(db, "videos", run.s3).write_config("20260101T000000Z-abcdef", run.to_dict())
    # decode=None: the settings come from the run config, relative URIs resolve too.
    with CatalogSearch(db, model=SPEC, rerank_tokens="recompute") as recompute:
        assert recompute.decode == decode
        yield db, recompute


def test_stored_and_recomputed_tokens_give_the_same_order(catalog):
    db, recompute = catalog
    stored = CatalogSearch(db, model=SPEC, rerank_tokens="stored")
    a = stored.text(QUERY, k=12, rerank=True, rerank_k=12)
    b = recompute.text(QUERY, k=12, rerank=True, rerank_k=12)
    assert stored.reranker.last_stats["source"] == "stored"
    assert recompute.reranker.last_stats["source"] == "recompute"
    assert recompute.reranker.last_stats["scored"] == 12
    # The same order, up to swaps of clips whose logits differ by less than 1e-5 (the random
    # tiny model barely separates these look-alike clips); bf16 storage vs float32
    # recompute moves a logit by ~1e-6.
    np.testing.assert_allclose(a["rerank_score"], b["rerank_score"], atol=1e-5)
    by_id = dict(zip(b["clip_id"].to_pylist(), b["rerank_score"].to_pylist(), strict=True))
    np.testing.assert_allclose(
        a["rerank_score"], [by_id[c] for c in a["clip_id"].to_pylist()], atol=1e-5
    )
    # Underneath: re-decoding each clip's window reproduces the stored tokens.
    rows = recompute.table.to_arrow().select(list(CANDIDATE_COLUMNS))
    fresh = recompute.reranker.recompute_tokens(rows)
    kept, _ = read_stored_tokens(stored._get_tokens_table(), rows)
    assert sorted(fresh) == sorted(kept) and len(kept) == 12
    for cid, tokens in kept.items():
        torch.testing.assert_close(
            fresh[cid].bfloat16().float(), tokens.float(), rtol=1e-2, atol=1e-2
        )
    auto = CatalogSearch(db, model=SPEC)
    auto.text(QUERY, k=3, rerank=True, rerank_k=12)
    assert auto.reranker.last_stats["source"] == "stored"


def test_recompute_checks_frames_signature_and_decode(catalog, caplog):
    _, recompute = catalog
    reranker = recompute.reranker
    table = recompute.table.to_arrow().sort_by(schema.CLIP_ID)
    candidates = table.select(list(CANDIDATE_COLUMNS))
    ids = candidates[schema.CLIP_ID].to_pylist()
    frames = candidates[schema.FRAME_INDICES].to_pylist()
    frames[1] = [0, 1, 2, 3]  # not what the decoder picks for this window
    uris = candidates[schema.URI].to_pylist()
    uris[2] = "videos/missing.mp4"
    sigs = candidates[schema.SIGNATURE].to_pylist()
    sigs[3] = "other"
    tampered = (
        candidates.set_column(4, schema.SIGNATURE, pa.array(sigs))
        .set_column(5, schema.FRAME_INDICES, pa.array(frames, pa.list_(pa.int32())))
        .set_column(1, schema.URI, pa.array(uris))
    )
    assert tampered.column_names == list(CANDIDATE_COLUMNS)
    token_ids, mask = tokenize(tiny_tokenizer(), [QUERY])
    with torch.inference_mode():
        _, hidden = reranker.model.encode_text(token_ids, mask)
    with caplog.at_level(logging.WARNING, logger="pipeline.rerank"):
        out = reranker.rerank(tampered, hidden, mask, k=12, source="recompute")
    assert out["clip_id"].to_pylist()[-3:] == [ids[1], ids[2], ids[3]]
    assert out["rerank_score"].null_count == 3 and len(out) == 12
    assert f"{ids[1]}: re-decode picked frames" in caplog.text
    assert f"{ids[2]}: re-decode of videos/missing.mp4 failed: fetch_error" in caplog.text
    assert f"clip {ids[3]} was embedded under signature other" in caplog.text


def test_parallel_recompute_equals_one_decoder(catalog):
    """Candidates are re-decoded by several decoder processes at once; the tokens are those
    of one decoder doing them in turn, in the candidates' order."""
    _, recompute = catalog
    base = recompute.reranker
    rows = recompute.table.to_arrow().select(list(CANDIDATE_COLUMNS))

    def rerankers(decoders: int) -> Reranker:
        config = RerankConfig(tokens="recompute", decoders=decoders)
        return Reranker(base.model, base.embed_frames, base.decode, base.expected_signature, config)

    one, three = rerankers(1), rerankers(3)
    try:
        serial, parallel = one.recompute_tokens(rows), three.recompute_tokens(rows)
    finally:
        one.close()
        three.close()
    assert list(parallel) == list(serial) == rows[schema.CLIP_ID].to_pylist()
    for cid in serial:
        torch.testing.assert_close(parallel[cid], serial[cid], rtol=0, atol=0)
    with pytest.raises(ValueError, match="decoders"):
        RerankConfig(decoders=0)
