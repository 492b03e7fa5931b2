"""CatalogSearch and its CLI on real LanceDB tables in tmp_path, with the tiny random model."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
from datetime import timedelta

import lancedb
import numpy as np
import pyarrow as pa
import pytest
import torch
from media import write_video

from jobs import query as query_cli
from jobs.query import format_results, main
from models.internvideo2.tokenizer import tiny_tokenizer, tokenize
from pipeline import query, schema
from pipeline.decode import DecodeConfig, DecodeStage
from pipeline.embed import EmbedConfig, EmbedStage
from pipeline.index import IndexConfig, build_index
from pipeline.models import ModelSpec
from pipeline.query import CatalogSearch, QueryError
from pipeline.runner import RunConfig
from pipeline.runs import RUN_DECODE_FIELDS, RunFiles
from pipeline.sink import LanceSink, SinkConfig
from pipeline.storage import S3Config

SPEC = ModelSpec(model="tiny-random")
QUERY = "a red square moving left"
PLANTED = "v3#00000"
META = (pa.field("caption", pa.string()), pa.field("category", pa.string()))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_clips(db: str, table: str, rows: list[dict]) -> None:
    """Commit rows (video_id, clip_index, embedding, caption, category, ...) via LanceSink."""
    n = len(rows)
    batch = pa.table(
        {
            schema.VIDEO_ID: [r["video_id"] for r in rows],
            schema.CLIP_INDEX: pa.array([r.get("clip_index", 0) for r in rows], pa.int32()),
            schema.CLIP_START_S: [r.get("clip_index", 0) * 1.0 for r in rows],
            schema.CLIP_END_S: [r.get("clip_index", 0) + 1.0 for r in rows],
            schema.URI: [f"/nonexistent/{r['video_id']}.mp4" for r in rows],
            schema.STATUS: ["ok"] * n,
            schema.EMBEDDING: schema.fixed_size_list(
                np.stack([r["embedding"] for r in rows]).astype(np.float32)
            ),
            schema.MODEL: [SPEC.identity()] * n,
            schema.SIGNATURE: ["planted"] * n,
            schema.NUM_FRAMES: pa.array([4] * n, pa.int32()),
            schema.FRAME_INDICES: pa.array([list(range(4))] * n, pa.list_(pa.int32())),
            "caption": [r.get("caption", "clip") for r in rows],
            "category": [r.get("category", "news") for r in rows],
        }
    )
    with LanceSink(SinkConfig(db_uri=db, table=table, metadata_fields=META)) as sink:
        sink.write(batch)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return SPEC.build("cpu", torch.float32)


@pytest.fixture(scope="module")
def query_vector(model):
    ids, mask = tokenize(tiny_tokenizer(), [QUERY])
    with torch.inference_mode():
        return model.encode_text(ids, mask)[0][0].numpy()


@pytest.fixture(scope="module")
def planted(tmp_path_factory, query_vector):
    """v0 has 3 clips; v1..v7 one each; v3's clip is the text embedding of QUERY."""
    db = str(tmp_path_factory.mktemp("planted") / "db")
    rng = np.random.default_rng(7)
    rows = [
        {
            "video_id": "v0",
            "clip_index": i,
            "embedding": unit(rng.normal(size=512)),
            "category": "sports",
            "caption": "a long caption that does not fit in one table cell",
        }
        for i in range(3)
    ]
    for v in range(1, 8):
        rows.append(
            {
                "video_id": f"v{v}",
                "embedding": unit(rng.normal(size=512)),
                "category": "sports" if v % 2 else "news",
                "caption": f"clip {v}",
            }
        )
    rows[5] = {**rows[5], "embedding": query_vector, "caption": QUERY, "category": "news"}  # v3
    write_clips(db, "videos", rows)
    return db, {f"{r['video_id']}#{r.get('clip_index', 0):05d}": r for r in rows}


@pytest.fixture(scope="module")
def search(planted):
    return CatalogSearch(planted[0], model=SPEC)


def test_planted_caption_comes_first(search, planted):
    out = search.text(QUERY, k=4)
    assert out.column_names == [
        "clip_id",
        "video_id",
        "clip_index",
        "clip_start_s",
        "clip_end_s",
        "uri",
        "score",
        "caption",
        "category",
    ]
    assert out["clip_id"][0].as_py() == PLANTED
    assert out["score"][0].as_py() == pytest.approx(1.0, abs=1e-5)
    scores = out["score"].to_numpy()
    assert len(out) == 4 and np.all(np.diff(scores) <= 0)
    rows = planted[1]
    expected = [
        float(rows[c]["embedding"] @ rows[PLANTED]["embedding"]) for c in out["clip_id"].to_pylist()
    ]
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_where_filters_before_the_search(search):
    out = search.text(QUERY, k=5, where="category = 'sports'")
    assert len(out) == 5 and set(out["category"].to_pylist()) == {"sports"}
    assert PLANTED not in out["clip_id"].to_pylist()


def test_precomputed_vector_skips_the_text_encoder(planted, query_vector):
    out = CatalogSearch(planted[0]).text("anything", k=1, vector=query_vector)
    assert out["clip_id"].to_pylist() == [PLANTED]


def test_similar_uses_the_mean_clip_and_excludes_the_video(planted):
    db, rows = planted
    lazy = ModelSpec(model="internvideo2-1b", checkpoint="/nonexistent/weights.pt")
    search = CatalogSearch(db, model=lazy)  # similar() never loads the model
    out = search.similar("v0", k=3)
    assert len(out) == 3 and "v0" not in out["video_id"].to_pylist()
    mean = unit(np.mean([rows[f"v0#{i:05d}"]["embedding"] for i in range(3)], axis=0))
    expected = sorted(
        (float(r["embedding"] @ mean) for c, r in rows.items() if r["video_id"] != "v0"),
        reverse=True,
    )[:3]
    np.testing.assert_allclose(out["score"].to_numpy(), expected, atol=1e-5)
    everything = search.similar("v0", k=100, where="category = 'sports' OR category = 'news'")
    assert len(everything) == 7 and "v0" not in everything["video_id"].to_pylist()
    hostile = search.similar("v0", k=100, where="1 = 1) OR (1 = 1")
    assert "v0" not in hostile["video_id"].to_pylist()
    with pytest.raises(QueryError, match="cannot load the model"):
        search.text(QUERY)


def test_pages_with_offset_are_slices_of_one_ranking(search, planted):
    full = search.text(QUERY, k=10)["clip_id"].to_pylist()
    assert len(full) == 10  # every row
    assert search.text(QUERY, k=3, offset=3)["clip_id"].to_pylist() == full[3:6]
    assert search.text(QUERY, k=5, offset=7)["clip_id"].to_pylist() == full[7:]
    similar = search.similar("v1", k=6)["clip_id"].to_pylist()
    assert search.similar("v1", k=2, offset=4)["clip_id"].to_pylist() == similar[4:6]
    with pytest.raises(QueryError, match="offset must be an integer from 0"):
        search.text(QUERY, offset=-1)
    with pytest.raises(QueryError, match="k \\+ offset must be at most"):
        search.text(QUERY, k=10, offset=query.MAX_K)


def test_similar_clip_uses_the_clip_and_excludes_its_video(search, planted):
    rows = planted[1]
    out = search.similar_clip("v0#00001", k=4)
    assert len(out) == 4 and "v0" not in out["video_id"].to_pylist()
    expected = sorted(
        (c for c in rows if not c.startswith("v0#")),
        key=lambda c: -float(rows[c]["embedding"] @ rows["v0#00001"]["embedding"]),
    )[:4]
    assert out["clip_id"].to_pylist() == expected
    with pytest.raises(QueryError, match="unknown clip_id 'nope'"):
        search.similar_clip("nope")
    assert search.clip("v3#00000")["caption"] == QUERY and search.clip("nope") is None
    assert search.thumbnail("v3#00000") is None  # no thumbnails table here


def test_structured_filters_and_hybrid_mode(search, planted):
    where = search.filter_sql(["category:eq:news"])
    out = search.text(QUERY, k=10, where=where)
    assert set(out["category"].to_pylist()) == {"news"} and out["clip_id"][0].as_py() == PLANTED
    with pytest.raises(QueryError, match="no filterable column 'nope'"):
        search.filter_sql(["nope:eq:x"])
    with pytest.raises(QueryError, match="no full-text index for mode=hybrid"):
        search.text(QUERY, mode="hybrid")
    with pytest.raises(QueryError, match="mode must be one of"):
        search.text(QUERY, mode="fts")


def test_hybrid_finds_the_words_the_embeddings_miss(tmp_path):
    """Embeddings that know nothing (all equal) and one caption with the query's word:
    the full-text side of the hybrid search puts it first."""
    from pipeline.index import build_fts_indices

    db = str(tmp_path / "db")
    same = unit(np.ones(512))
    words = ["harbour at dawn", "a zebra crossing", "city traffic", "forest walk"]
    write_clips(db, "videos", [
        {"video_id": f"w{i}", "embedding": same, "caption": c, "category": "x"}
        for i, c in enumerate(words)
    ])  # fmt: skip
    table = lancedb.connect(db).open_table("videos")
    build_fts_indices(table, ["caption"])
    with CatalogSearch(db, model=SPEC) as search:
        assert search.fts_columns() == ["caption"]
        out = search.text("zebra", k=4, mode="hybrid")
        assert out["clip_id"][0].as_py() == "w1#00000"
        assert out.column_names[-1] == query.COSINE
        cosine = out["cosine"].to_numpy()  # equal embeddings: one similarity for all
        np.testing.assert_allclose(cosine, cosine[0], atol=1e-5)
        only = search.text("zebra", k=4, mode="hybrid", where="video_id != 'w1'")
        assert "w1#00000" not in only["clip_id"].to_pylist()


def test_image_query_takes_the_one_frame_path(tmp_path):
    """A still goes through the isolated decoder (still-image mode) and the model's T=1
    image path: the same as embedding that one frame through the encoder directly."""
    from media import write_png

    from pipeline.embed import encode_frames

    root = tmp_path / "media"
    root.mkdir()
    write_png(root / "still.png", width=80, height=60)
    write_video(root / "v.mp4", 30)
    decode = DecodeConfig(allowed_roots=(str(root),))
    db = str(tmp_path / "db")
    write_clips(db, "videos", [
        {"video_id": f"i{i}", "embedding": unit(np.random.default_rng(i).normal(size=512)),
         "caption": "c", "category": "x"}
        for i in range(5)
    ])  # fmt: skip
    with CatalogSearch(db, model=SPEC, decode=decode, device="cpu") as search:
        vector = search.embed_media(str(root / "still.png"), still=True)
        out = search.image(str(root / "still.png"), k=3)
        model = search._get_encoder().model
        with pytest.raises(QueryError, match="cannot decode query image"):
            search.image(str(root / "v.mp4"))
    frame = np.full((1, 1, decode.size, decode.size, 3), 200, np.uint8)
    expected = encode_frames(model, frame)[0][0]
    np.testing.assert_allclose(vector, expected, atol=1e-4)
    assert len(out) == 3


@pytest.mark.parametrize("odd", ["x\\'y", "o'k", "back\\slash", "x' OR '1'='1", "ü"])
def test_similar_takes_any_video_id(tmp_path, odd):
    db = str(tmp_path / "db")
    vectors = unit(np.random.default_rng(4).normal(size=(4, 512)))
    ids = [odd, "a", "b", "c"]
    write_clips(
        db, "videos", [{"video_id": v, "embedding": e} for v, e in zip(ids, vectors, strict=True)]
    )
    out = CatalogSearch(db).similar(odd, k=10)
    assert sorted(out["video_id"].to_pylist()) == ["a", "b", "c"]
    np.testing.assert_allclose(
        out["score"].to_numpy(), np.sort(vectors[1:] @ vectors[0])[::-1], atol=1e-5
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.text(""), "empty"),
        (lambda s: s.text("   \n"), "empty"),
        (lambda s: s.text(QUERY, k=0), "k must be an integer from 1 to 10000"),
        (lambda s: s.text(QUERY, k=2**31), "k must be an integer from 1 to 10000"),
        (lambda s: s.similar("v0", k=10_001), "k must be an integer from 1 to 10000"),
        (lambda s: s.text(QUERY, where="category = 'a'; category = 'b'"), "one SQL expression"),
        (lambda s: s.similar("v0", where="category = 'a';"), "';' would end it"),
        (lambda s: s.text(QUERY, rerank=True, rerank_k=0), "rerank_k"),
        (lambda s: s.similar("nope"), "unknown video_id 'nope'"),
        (lambda s: s.similar("v0", k=-1), "k must be"),
        (lambda s: s.text(QUERY, where="category = "), r"invalid where clause 'category = '"),
        (lambda s: s.text(QUERY, where="no_such_column = 1"), "no_such_column"),
        (lambda s: s.similar("v0", where="category ="), "invalid where clause"),
        (lambda s: s.video(""), "empty"),
        (lambda s: s.video("/nonexistent/q.mp4"), "cannot decode query video"),
    ],
)
def test_bad_queries_raise_clear_errors(search, call, message):
    with pytest.raises(QueryError, match=message):
        call(search)


def test_errors_without_model_table_or_tokenizer(planted, tmp_path):
    db = planted[0]
    with pytest.raises(QueryError, match=r"no table 'missing' in .*db"):
        CatalogSearch(db, table="missing")
    bare = CatalogSearch(db)
    with pytest.raises(QueryError, match="needs a model"):
        bare.text(QUERY)
    with pytest.raises(QueryError, match="rerank needs a model"):
        bare.text(QUERY, rerank=True, vector=np.ones(512, np.float32) / 512**0.5)
    with pytest.raises(QueryError, match="WordPiece"):
        CatalogSearch(db, model=SPEC, tokenizer=str(tmp_path / "vocab.txt")).text(QUERY)
    assert issubclass(QueryError, ValueError)


def test_searcher_sees_rows_committed_after_it_opened(tmp_path):
    db = str(tmp_path / "db")
    rng = np.random.default_rng(1)
    write_clips(
        db,
        "videos",
        [{"video_id": f"old{i}", "embedding": unit(rng.normal(size=512))} for i in range(3)],
    )
    search = CatalogSearch(db)
    fresh = unit(rng.normal(size=512))
    assert search.text("q", k=1, vector=fresh)["video_id"][0].as_py().startswith("old")
    write_clips(db, "videos", [{"video_id": "new", "embedding": fresh}])  # another connection
    out = search.text("q", k=10, vector=fresh)
    assert out["video_id"][0].as_py() == "new" and len(out) == 4


def test_searcher_uses_the_presets_of_the_index_the_table_has(tmp_path):
    """Searching an IVF_SQ index with IVF_HNSW_SQ's 2 probes would cost recall: the searcher
    picks the parameters of the index that is there, also one built after it opened."""
    db = str(tmp_path / "db")
    rng = np.random.default_rng(2)
    vectors = unit(rng.normal(size=(300, 512)))
    write_clips(
        db, "videos", [{"video_id": f"v{i}", "embedding": e} for i, e in enumerate(vectors)]
    )
    search = CatalogSearch(db, index_recheck=timedelta(0))
    assert search.index == IndexConfig()
    other = lancedb.connect(db).open_table("videos")
    build_index(other, IndexConfig.preset("IVF_SQ", min_rows_for_index=100))
    assert (search.index.index_type, search.index.nprobes, search.index.ef) == ("IVF_SQ", 6, None)
    assert search.text("q", k=1, vector=vectors[42])["video_id"][0].as_py() == "v42"
    pinned = CatalogSearch(db, index=IndexConfig())
    assert pinned.index == IndexConfig()


def test_searcher_reads_the_table_version_at_most_once_per_recheck_period(tmp_path, monkeypatch):
    """Each version read is a metadata request (one more per query on S3): queries within
    `index_recheck` reuse the parameters; the first query after it notices a new index."""
    db = str(tmp_path / "db")
    vectors = unit(np.random.default_rng(3).normal(size=(300, 512)))
    write_clips(
        db, "videos", [{"video_id": f"v{i}", "embedding": e} for i, e in enumerate(vectors)]
    )
    clock = [1000.0]
    monkeypatch.setattr(query.time, "monotonic", lambda: clock[0])
    search = CatalogSearch(db, index_recheck=timedelta(seconds=5))
    reads = []
    table_type = type(search.table)
    original = table_type.version
    monkeypatch.setattr(
        table_type,
        "version",
        property(lambda t: (t is search.table and reads.append(1)) or original.fget(t)),
    )
    assert search.index == IndexConfig() and len(reads) == 1
    build_index(
        lancedb.connect(db).open_table("videos"),
        IndexConfig.preset("IVF_SQ", min_rows_for_index=100),
    )
    clock[0] += 4.9
    for _ in range(3):
        assert search.index == IndexConfig()
    assert len(reads) == 1
    clock[0] += 0.1
    assert search.index.index_type == "IVF_SQ" and len(reads) == 2


def test_video_query_goes_through_the_pipeline_decode_and_model(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    for i, frames in enumerate((40, 60)):
        write_video(root / f"q{i}.mp4", frames)
    decode = DecodeConfig(allowed_roots=(str(root),), clip_seconds=1.0)
    manifest = pa.table(
        {
            "video_id": ["q0", "q1"],
            "uri": [str(root / "q0.mp4"), str(root / "q1.mp4")],
            "caption": ["zero", "one"],
            "category": ["a", "b"],
        }
    )
    stage = EmbedStage(EmbedConfig(model=SPEC, signature_extra=decode.signature_inputs()))
    rows = stage(DecodeStage(decode).decode_batch(manifest))
    db = str(tmp_path / "db")
    with LanceSink(SinkConfig(db_uri=db, metadata_fields=META)) as sink:
        sink.write(rows)
    with CatalogSearch(db, model=SPEC, decode=decode) as search:
        single = search.video(f"file://{root / 'q0.mp4'}", k=1)  # 1.6 s: one clip
        out = search.video(str(root / "q1.mp4"), k=3)  # 2.4 s: two 1-s clips, mean of both
    # Same decode and model as the pipeline: the query clip is the stored one exactly.
    assert single["clip_id"].to_pylist() == ["q0#00000"]
    assert single["score"][0].as_py() == pytest.approx(1.0, abs=1e-5)
    assert sorted(out["clip_id"].to_pylist()) == ["q0#00000", "q1#00000", "q1#00001"]
    ids = [
        schema.clip_id(v, i)
        for v, i in zip(rows["video_id"].to_pylist(), rows["clip_index"].to_pylist(), strict=True)
    ]
    emb = dict(zip(ids, np.stack(rows["embedding"].to_numpy(zero_copy_only=False)), strict=True))
    mean = unit(emb["q1#00000"] + emb["q1#00001"])
    expected = [float(emb[c] @ mean) for c in out["clip_id"].to_pylist()]
    np.testing.assert_allclose(out["score"].to_numpy(), expected, atol=1e-4)


def test_video_query_takes_a_path_relative_to_the_working_directory(planted, tmp_path, monkeypatch):
    """`search.video("query.mp4")`, as documented: the path is made absolute before the
    decode, whose only allowed root is still the file's own directory."""
    write_video(tmp_path / "query.mp4", 40)
    monkeypatch.chdir(tmp_path)
    with CatalogSearch(planted[0], model=SPEC) as search:
        relative = search.video("query.mp4", k=3)
        absolute = search.video(str(tmp_path / "query.mp4"), k=3)
        uri = search.video(f"file://{tmp_path / 'query.mp4'}", k=3)
    assert len(relative) == 3
    assert relative.to_pylist() == absolute.to_pylist() == uri.to_pylist()


def test_decode_settings_of_the_latest_run_are_reproduced(tmp_path):
    """A table embedded with decord, keyframe sampling, a larger memory cap and other limits
    is re-decoded with them, not with the defaults."""
    db = str(tmp_path / "db")
    write_clips(db, "videos", [{"video_id": "v0", "embedding": unit(np.ones(512))}])
    s3 = S3Config(region="eu-west-1")
    decode = DecodeConfig(
        size=160,
        clip_seconds=10.0,
        clip_overlap_s=2.0,
        timeout_s=90.0,
        memory_limit_mb=8192,
        max_width=1920,
        max_height=1080,
        max_duration_s=600.0,
        max_bytes=50 << 30,
        decoder="decord",
        sampling="keyframe",
        allowed_roots=(str(tmp_path / "media"),),
        base_dir=str(tmp_path / "media"),
        s3=s3,
        max_attempts=3,
    )
    run = RunConfig(
        manifest=str(tmp_path / "m.parquet"),
        db=db,
        s3=s3,
        decode=decode,
        embed=EmbedConfig(model=SPEC),
    )
    runs = RunFiles(db, "videos", s3)
    runs.write_config("20260101T000000Z-old", {"decode": {}, "s3": {}})
    runs.write_config("20260102T000000Z-new", run.to_dict())
    assert DecodeConfig(**RunFiles(db, "videos").latest_decode_settings()) == decode
    assert CatalogSearch(db).decode == decode
    # A new DecodeConfig field must be classified: reproduced, or deliberately not.
    local_only = {"temp_dir", "fault_injection", "allowed_roots", "base_dir", "s3", "still_image"}
    fields = {f.name for f in dataclasses.fields(DecodeConfig)}
    assert fields - local_only == set(RUN_DECODE_FIELDS)


# ---- CLI --------------------------------------------------------------------------------
def test_cli_json_csv_and_table(planted, capsys):
    db = planted[0]
    assert main(["text", QUERY, "--db", db, "--k", "3", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["clip_id"] for r in rows][:1] == [PLANTED] and len(rows) == 3
    assert set(rows[0]) >= {"clip_id", "video_id", "score", "caption", "category", "uri"}

    assert (
        main(
            [
                "similar",
                "v1",
                "--db",
                db,
                "--k",
                "4",
                "--format",
                "csv",
                "--where",
                "category = 'sports'",
            ]
        )
        == 0
    )
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == 4 and {r["category"] for r in table} == {"sports"}
    assert all(r["video_id"] != "v1" for r in table) and float(table[0]["score"]) <= 1.0

    assert main(["similar", "v1", "--db", db, "--k", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["clip_id", "video_id"] and set(lines[1]) <= {"-", " "}
    assert len(lines) == 7 and any("…" in line for line in lines)  # the long caption
    widths = {len(line.rstrip()) for line in lines[2:]}
    assert max(widths) <= len(lines[1])


def test_cli_filters_modes_and_paging(planted, capsys):
    db = planted[0]
    args = ["--db", db, "--format", "json"]
    assert main(["text", QUERY, *args, "--k", "9"]) == 0
    full = [r["clip_id"] for r in json.loads(capsys.readouterr().out)]
    assert main(["text", QUERY, *args, "--k", "3", "--offset", "3"]) == 0
    assert [r["clip_id"] for r in json.loads(capsys.readouterr().out)] == full[3:6]
    assert main(["text", QUERY, *args, "--filter", "category:eq:sports", "--filter",
                 "caption:prefix:clip"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(r["category"] == "sports" and r["caption"].startswith("clip") for r in rows)
    assert main(["clip", "v0#00001", *args, "--k", "3", "--where", "category = 'news'"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and {r["category"] for r in rows} == {"news"}
    assert main(["text", QUERY, *args, "--filter", "views:gt:3"]) == 2
    assert "no filterable column 'views'" in capsys.readouterr().err
    assert main(["similar", "v1", *args, "--hybrid"]) == 2
    assert "--hybrid applies to text queries only" in capsys.readouterr().err
    assert main(["text", QUERY, *args, "--hybrid"]) == 2
    assert "vidcat index --fts" in capsys.readouterr().err


def test_cli_errors_exit_2(planted, capsys):
    db = planted[0]
    assert main(["text", "  ", "--db", db]) == 2
    assert "error: the query text is empty" in capsys.readouterr().err
    assert main(["similar", "v1", "--db", db, "--where", "category ="]) == 2
    assert "category =" in capsys.readouterr().err
    assert main(["similar", "v1", "--db", db, "--table", "nope"]) == 2
    assert "no table 'nope'" in capsys.readouterr().err
    assert main(["text", QUERY, "--db", db, "--k", "0"]) == 2


@pytest.mark.parametrize(
    "cmd",
    [
        [os.path.join(os.path.dirname(sys.executable), "vidcat"), "query"],
        [sys.executable, os.path.join(ROOT, "jobs", "query.py")],
    ],
    ids=["vidcat", "script"],
)
def test_cli_entry_points(planted, cmd, tmp_path):
    """`vidcat query` and `python jobs/query.py` run the same code, from any directory."""
    args = ["similar", "v2", "--db", planted[0], "--format", "json", "--k", "2"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 2


def test_format_results_handles_nulls_and_lists():
    rows = pa.table({"a": [1.0, float("nan")], "b": [[1, 2], None], "c": ["x", None]})
    assert json.loads(format_results(rows, "json")) == [
        {"a": 1.0, "b": [1, 2], "c": "x"},
        {"a": None, "b": None, "c": None},
    ]
    assert format_results(rows, "csv").splitlines() == ["a,b,c", '1.0,"[1, 2]",x', ",,"]
    with pytest.raises(ValueError, match="unknown format"):
        format_results(rows, "xml")


def test_cli_s3_options_default_to_the_aws_environment(planted, monkeypatch, capsys):
    """Like jobs/embed_catalog.py: --s3-endpoint-url and --s3-region default to
    AWS_ENDPOINT_URL and AWS_REGION, and both reach the storage options."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    args = query_cli.build_parser().parse_args(["similar", "v1", "--db", planted[0]])
    assert (args.s3_endpoint_url, args.s3_region) == ("http://127.0.0.1:9", "eu-west-1")
    seen = []

    def opened(db, table="videos", *, storage_options=None, **kwargs):
        seen.append(storage_options)
        raise QueryError("stop")

    monkeypatch.setattr(query_cli, "CatalogSearch", opened)
    assert main(["similar", "v1", "--db", planted[0], "--s3-region", "us-west-2"]) == 2
    retries = {"client_max_retries": "4", "client_retry_timeout": "180"}
    assert seen == [
        {"endpoint": "http://127.0.0.1:9", "allow_http": "true", "region": "us-west-2", **retries}
    ]
