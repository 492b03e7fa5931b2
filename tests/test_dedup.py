"""Near-duplicate detection: planted groups found exactly, border pairs, incremental passes
equal to full ones, deleted clips leaving their groups, the lease, search collapsing groups,
and real re-encoded / trimmed / cropped copies through the pipeline."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import av
import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import cli
from jobs import find_duplicates as dedup_job
from jobs import query as query_job
from pipeline import dedup, sample_catalog, schema
from pipeline.dedup import (
    DedupConfig,
    PairFinder,
    components,
    duplicate_videos,
    find_pairs,
    read_duplicates,
    run_dedup,
)
from pipeline.index import IndexConfig
from pipeline.kmeans import nearest_centroids
from pipeline.lease import Lease, LeaseConfig, lease_holder
from pipeline.query import CatalogSearch, QueryError
from pipeline.runs import RunFiles
from pipeline.storage import S3Config

D = schema.EMBED_DIM
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CPU = DedupConfig(device="cpu")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _near(rng, source: np.ndarray, cos: float) -> np.ndarray:
    """A unit vector with cosine exactly `cos` to the unit vector `source`."""
    u = rng.standard_normal(D).astype(np.float32)
    u = _unit(u - (u @ source) * source)
    return (cos * source + np.sqrt(1 - cos * cos) * u).astype(np.float32)


def _rows(x, videos, at, clips=None, ends=None, extra=None) -> pa.Table:
    """Embeddings-table rows for vectors `x` `[n, 512]` (clip `clips[i]` of `videos[i]`)."""
    n = len(x)
    clips = [0] * n if clips is None else clips
    ends = [4.0] * n if ends is None else ends
    at = at if isinstance(at, list) else [at] * n
    fields = list(extra or {})
    data = {
        schema.CLIP_ID: [schema.clip_id(v, c) for v, c in zip(videos, clips, strict=True)],
        schema.VIDEO_ID: list(videos),
        schema.CLIP_INDEX: pa.array(clips, pa.int32()),
        schema.CLIP_START_S: pa.array([0.0] * n),
        schema.CLIP_END_S: pa.array(ends, pa.float64()),
        schema.URI: [f"/v/{v}.mp4" for v in videos],
        schema.EMBEDDING: schema.fixed_size_list(np.asarray(x, np.float32)),
        schema.MODEL: ["m"] * n,
        schema.SIGNATURE: ["s"] * n,
        schema.NUM_FRAMES: pa.array([4] * n, pa.int32()),
        schema.FRAME_INDICES: pa.nulls(n, pa.list_(pa.int32())),
        schema.DECODER: ["pyav"] * n,
        schema.CONTENT_VERSION: ["1"] * n,
        schema.EMBEDDED_AT: pa.array(at, pa.timestamp("us", tz="UTC")),
        **(extra or {}),
    }
    meta = tuple(pa.field(f, pa.array(extra[f]).type) for f in fields)
    return pa.table(data, schema=schema.embeddings_schema(meta))


def _planted(seed: int = 0, n: int = 3000, families: int = 40):
    """`n` random unit vectors (pairwise cosine ~0 +- 0.05) with `families` planted
    groups: a source and 1-3 copies at cosine 0.96-0.99 to it (copies of one source may be
    below the threshold with each other: they join through the source)."""
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((n, D)).astype(np.float32))
    videos = [f"v{i:05d}" for i in range(n)]
    at = [T0] * n
    expected = []
    row = n - 3 * families
    for f in range(families):
        members = [videos[f]]
        for _ in range(1 + f % 3):
            x[row] = _near(rng, x[f], rng.uniform(0.96, 0.99))
            at[row] = T0 + timedelta(hours=1)  # the source is embedded first
            members.append(videos[row])
            row += 1
        expected.append(sorted(schema.clip_id(v, 0) for v in members))
    return x, videos, at, expected


def _groups(db: str, table: str = "videos", options=None) -> list[list[str]]:
    dup = read_duplicates(db, table, options)
    by: dict[str, list[str]] = {}
    for clip, gid in zip(dup[schema.CLIP_ID].to_pylist(), dup[schema.GROUP_ID].to_pylist(),
                         strict=True):  # fmt: skip
        by.setdefault(gid, []).append(clip)
    return sorted(sorted(g) for g in by.values())


@pytest.fixture
def planted_db(tmp_path):
    x, videos, at, expected = _planted()
    db = str(tmp_path / "db")
    lancedb.connect(db).create_table("videos", _rows(x, videos, at))
    return db, x, videos, expected


# ---- vector level -----------------------------------------------------------------------


def test_planted_groups_are_recovered_exactly_and_unrelated_clips_stay_out(planted_db):
    db, _, _, expected = planted_db
    report = run_dedup(db, "videos", CPU)
    assert report["mode"] == "full" and report["reason"] == "no saved state"
    assert _groups(db) == sorted(expected)  # nothing else grouped
    dup = read_duplicates(db).to_pylist()
    for row in dup:  # the source (embedded first) represents its copies
        members = next(g for g in expected if row["clip_id"] in g)
        assert row["representative_clip_id"] == members[0] == row["group_id"]
        assert row["group_size"] == len(members) and row["video_clips"] == 1
        assert (row["similarity"] == 1.0) == (row["clip_id"] == members[0])
        assert row["similarity"] >= 0.96 - 1e-6
    counts = report["counts"]
    assert counts["groups"] == 40 and counts["clips_in_groups"] == sum(map(len, expected))
    assert counts["video_pairs"] == sum(len(g) * (len(g) - 1) // 2 for g in expected)


def test_pairs_split_by_a_cluster_border_are_found_with_the_second_probe():
    """Two clips on either side of the border between two centroids: only comparing each
    clip with its second-nearest cluster finds them."""
    rng = np.random.default_rng(1)
    centroids = _unit(rng.standard_normal((4, D)).astype(np.float32))
    mid = _unit(centroids[0] + centroids[1])
    p = _unit(mid + 0.01 * centroids[0] + 0.05 * _unit(rng.standard_normal(D)))
    q = _unit(mid + 0.01 * centroids[1] + 0.05 * _unit(rng.standard_normal(D)))
    others = _unit(rng.standard_normal((200, D)).astype(np.float32))
    x = np.ascontiguousarray(np.vstack([p, q, others]), dtype=np.float32)
    assert float(p @ q) > 0.95
    labels, _ = nearest_centroids(x, centroids, probes=2)
    assert labels[0, 0] == 0 and labels[1, 0] == 1  # nearest centroids differ
    found = {}
    for probes in (1, 2):
        finder = PairFinder(x, 0.95, tile=64)
        find_pairs(finder, labels[:, :probes])
        found[probes] = {tuple(sorted(e)) for e in zip(*finder.edges(), strict=True)}
    assert found[1] == set() and found[2] == {(0, 1)}


def test_components_and_tiles_agree_with_brute_force():
    """Union-find over many tiles (tile 16) equals the components of the exact pair set."""
    rng = np.random.default_rng(2)
    x = _unit(rng.standard_normal((300, D)).astype(np.float32))
    for i in range(0, 60, 3):  # chains of three: a-b and b-c close, a-c further apart
        x[i + 1] = _near(rng, x[i], 0.97)
        x[i + 2] = _near(rng, x[i + 1], 0.97)
    finder = PairFinder(x, 0.95, tile=16, workers=2)
    finder.compare(np.arange(300))
    got = components(300, *finder.edges())
    sims = x @ x.T
    a, b = np.nonzero(np.triu(sims >= 0.95, 1))
    assert np.array_equal(got, components(300, a, b))
    assert finder.compared == 300 * 299 // 2
    assert np.allclose(finder.nn, np.where(np.eye(300, dtype=bool), -2, sims).max(1), atol=1e-5)


# ---- incremental passes --------------------------------------------------------------------


def test_incremental_pass_equals_a_full_pass_and_deleted_clips_leave_their_groups(planted_db):
    db, x, videos, expected = planted_db
    rng = np.random.default_rng(3)
    run_dedup(db, "videos", CPU)
    table = lancedb.connect(db).open_table("videos")
    # A chain a - b - c (b close to both, a and c below the threshold), a copy of an existing
    # source, 20 unrelated clips, a re-embedded clip (new vector, later) and a deletion.
    a = x[500]
    b = _near(rng, a, 0.975)
    c = _unit(2 * 0.975 * b - a)  # cos(b, c) = 0.975, cos(a, c) = 2 * 0.975**2 - 1 = 0.90
    new = [b, c, _near(rng, x[7], 0.97), *_unit(rng.standard_normal((20, D)))]
    names = ["chain-b", "chain-c", "copy-of-7", *(f"fresh{i}" for i in range(20))]
    later = T0 + timedelta(days=1)
    table.add(_rows(np.stack(new), names, later))
    moved = videos[8]  # source of a 3-member family; re-embedded far from its copies
    table.delete(f"video_id = '{moved}'")
    table.add(_rows(_unit(rng.standard_normal((1, D))), [moved], later))
    gone = next(g for g in expected if len(g) == 2)  # a 2-member family loses a member
    table.delete(f"video_id = '{gone[1].split('#')[0]}'")

    def incremental_equals_full() -> list[list[str]]:
        report = run_dedup(db, "videos", CPU)
        assert report["mode"] == "incremental", report["reason"]
        incremental = read_duplicates(db).drop(["run_id"])
        assert run_dedup(db, "videos", CPU, full=True)["mode"] == "full"
        assert read_duplicates(db).drop(["run_id"]).equals(incremental)
        return _groups(db)

    report = run_dedup(db, "videos", CPU)
    assert report["mode"] == "incremental", report["reason"]
    assert [report["counts"][k] for k in ("new", "changed", "deleted")] == [23, 1, 1]
    incremental = read_duplicates(db).drop(["run_id"])
    run_dedup(db, "videos", CPU, full=True)
    assert read_duplicates(db).drop(["run_id"]).equals(incremental)
    groups = _groups(db)
    assert sorted(["v00500#00000", "chain-b#00000", "chain-c#00000"]) in groups
    assert not any(gone[0] in g for g in groups)  # a group of two that lost one is gone
    family_8 = next(g for g in expected if g[0] == schema.clip_id(moved, 0))
    assert family_8[1:] in groups  # the copies stay together without their old source
    assert not any(schema.clip_id(moved, 0) in g for g in groups)

    # deleting the bridge splits the chain: a and c are not near-duplicates
    table.delete("video_id = 'chain-b'")
    assert not any("chain-c#00000" in g or "v00500#00000" in g for g in incremental_equals_full())
    table.add(_rows(b[None], ["chain-b"], later))  # the bridge is back
    assert sorted(["v00500#00000", "chain-b#00000", "chain-c#00000"]) in incremental_equals_full()
    again = run_dedup(db, "videos", CPU)  # nothing changed
    assert again["mode"] == "incremental" and again["counts"]["new"] == 0


def test_a_large_backlog_or_other_eps_forces_a_full_pass(planted_db):
    db, _, _, _ = planted_db
    run_dedup(db, "videos", CPU)
    rng = np.random.default_rng(4)
    table = lancedb.connect(db).open_table("videos")
    table.add(_rows(_unit(rng.standard_normal((700, D))), [f"n{i}" for i in range(700)], T0))
    report = run_dedup(db, "videos", CPU)  # 700 > 0.2 * 3000
    assert report["mode"] == "full" and report["reason"].startswith("backlog 700 rows > 0.2")
    assert report["backlog"]["rows"] == 0 and report["backlog"]["rows_at_full"] == 3700
    other = run_dedup(db, "videos", DedupConfig(eps=0.1, device="cpu"))
    assert other["mode"] == "full" and other["reason"].startswith("eps changed")


def test_a_catalog_on_s3_keeps_its_state_there(s3_bucket):
    endpoint, bucket = s3_bucket
    s3 = S3Config(endpoint_url=endpoint, region="us-east-1")
    db, options = f"s3://{bucket}/db", s3.storage_options()
    x, videos, at, expected = _planted(n=600, families=10)
    table = lancedb.connect(db, storage_options=options).create_table(
        "videos", _rows(x, videos, at)
    )
    assert run_dedup(db, "videos", CPU, s3=s3)["mode"] == "full"
    assert _groups(db, options=options) == sorted(expected)
    copy = _near(np.random.default_rng(6), x[500], 0.98)
    table.add(_rows(copy[None], ["late-copy"], T0 + timedelta(days=1)))
    report = run_dedup(db, "videos", CPU, s3=s3)
    assert report["mode"] == "incremental" and report["counts"]["new"] == 1
    assert report["state_uri"] == f"{db}/_vidcat/videos/dedup/state.json"
    assert sorted(["v00500#00000", "late-copy#00000"]) in _groups(db, options=options)


# ---- representatives, report, lease, job --------------------------------------------------


def test_representative_rules(tmp_path):
    rng = np.random.default_rng(5)
    src = _unit(rng.standard_normal(D))
    x = np.stack([src, _near(rng, src, 0.98), _near(rng, src, 0.97)])
    at = [T0 + timedelta(hours=2), T0, T0 + timedelta(hours=1)]
    db = str(tmp_path / "db")
    rows = _rows(x, ["a", "b", "c"], at, ends=[4.0, 3.0, 9.0],
                 extra={"bitrate": [500, None, 300]})  # fmt: skip
    lancedb.connect(db).create_table("videos", rows)
    for keep, rep in (("earliest", "b"), ("longest", "c"), ("bitrate", "a"),
                      ("bitrate:min", "c"), ("bitrate:max", "a")):  # fmt: skip
        run_dedup(db, "videos", DedupConfig(keep=keep, device="cpu"), full=True)
        reps = set(read_duplicates(db)[schema.REPRESENTATIVE_CLIP_ID].to_pylist())
        assert reps == {schema.clip_id(rep, 0)}, keep
    with pytest.raises(ValueError, match="not a column"):
        run_dedup(db, "videos", DedupConfig(keep="nope", device="cpu"))
    with pytest.raises(ValueError, match="keep must be"):
        DedupConfig(keep="bitrate:median")


def test_report_counts_per_eps_and_the_histogram_png(planted_db):
    db, _, _, expected = planted_db
    report = run_dedup(db, "videos", CPU)
    within = report["nn_similarity"]["clips_with_neighbour_within_eps"]
    assert list(within) == [f"{0.01 * i:.2f}" for i in range(1, 21)]
    values = list(within.values())
    assert values == sorted(values) and within["0.05"] == sum(map(len, expected))
    assert values[0] == 0  # no planted copy is closer than 0.99
    assert (
        sum(report["nn_similarity"]["histogram"]["counts"])
        + report["nn_similarity"]["histogram"]["below_lo"]
        == report["nn_similarity"]["compared_clips"]
    )
    runs = RunFiles(db, "videos").runs_dir
    with open(f"{runs}/{report['run_id']}.dedup.json") as f:
        saved = json.load(f)
    assert saved["counts"] == report["counts"]
    with av.open(f"{runs}/{report['run_id']}.dedup.png") as png:
        image = next(png.decode(video=0)).to_ndarray(format="rgb24")
    assert image.shape == (320, 640, 3)
    assert (np.abs(image.astype(int) - (220, 30, 30)).sum(-1) == 0).any()  # the threshold line
    assert RunFiles(db, "videos").run_ids("report") == []  # not mistaken for embed reports


def test_the_job_takes_the_lease_and_exits_4_while_another_writer_holds_it(
    planted_db, monkeypatch, capsys
):
    db, _, _, _ = planted_db
    with Lease(db, "videos", "nightly-run", config=LeaseConfig(ttl_s=30)):
        assert dedup_job.main(["--db", db, "--device", "cpu"]) == 4
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: ") and "nightly-run" in err
    assert "videos_duplicates" not in lancedb.connect(db).list_tables().tables

    seen = []
    write = dedup._write_duplicates

    def watched(*args, **kwargs):
        seen.append(lease_holder(db, "videos"))
        return write(*args, **kwargs)

    monkeypatch.setattr(dedup, "_write_duplicates", watched)
    assert dedup_job.main(["--db", db, "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert seen[0]["job"] == "dedup" and seen[0]["owner"] == out["run_id"]
    assert out["run_id"].endswith("-dedup") and out["counts"]["groups"] == 40
    assert lease_holder(db, "videos") is None  # released
    assert dedup_job.main(["--db", db, "--keep", "nope"]) == 2
    missing = os.path.join(os.path.dirname(db), "missing")
    assert dedup_job.main(["--db", missing]) == 2
    assert not os.path.exists(missing)  # nothing created
    assert dedup_job.main(["--db", db, "--videos"]) == 0
    pairs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(pairs) == out["counts"]["video_pairs"] == 14 * 1 + 13 * 3 + 13 * 6
    assert "dedup" in cli.COMMANDS


# ---- search ----------------------------------------------------------------------------------


def test_search_with_dedup_returns_one_row_per_group(planted_db, capsys):
    db, x, videos, expected = planted_db
    search = CatalogSearch(db)
    with pytest.raises(QueryError, match="vidcat dedup"):
        search.text("q", k=3, vector=x[2], dedup=True)
    run_dedup(db, "videos", CPU)
    family = next(g for g in expected if g[0] == "v00002#00000")  # 4 members
    plain = search.text("q", k=len(family), vector=x[2])
    assert sorted(plain[schema.CLIP_ID].to_pylist()) == family
    collapsed = search.text("q", k=5, vector=x[2], dedup=True)
    assert collapsed.num_rows == 5 and "group_size" in collapsed.column_names
    assert collapsed[schema.CLIP_ID][0].as_py() == family[0]
    assert collapsed["group_size"].to_pylist()[0] == len(family)
    assert not set(collapsed[schema.CLIP_ID].to_pylist()[1:]) & set(family)

    # similar(): every result group distinct, k results kept
    rows = search.similar(videos[0], k=30, dedup=True)
    dup = read_duplicates(db)
    group_of = dict(zip(dup[schema.CLIP_ID].to_pylist(), dup[schema.GROUP_ID].to_pylist(),
                        strict=True))  # fmt: skip
    keys = [group_of.get(c, c) for c in rows[schema.CLIP_ID].to_pylist()]
    assert rows.num_rows == 30 and len(set(keys)) == 30

    assert query_job.main(["similar", videos[0], "--db", db, "--dedup", "--k", "3",
                           "--format", "json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert len(printed) == 3 and all("group_size" in r for r in printed)


def test_dedup_composes_with_paging_filters_similar_clip_and_vectors(planted_db, capsys):
    db, x, videos, expected = planted_db
    search = CatalogSearch(db)
    # No near-duplicates table yet: a clear error (CLI exit 2), not a crash.
    assert query_job.main(["similar", videos[2], "--db", db, "--dedup"]) == 2
    assert "run `vidcat dedup` first" in capsys.readouterr().err
    with pytest.raises(QueryError, match="vidcat dedup"):
        search.similar_clip(schema.clip_id(videos[2], 0), k=3, dedup=True)
    run_dedup(db, "videos", CPU)
    family = next(g for g in expected if g[0] == "v00002#00000")  # 4 members
    group_of = dict(
        zip(*(read_duplicates(db)[c].to_pylist() for c in (schema.CLIP_ID, schema.GROUP_ID)),
            strict=True)
    )  # fmt: skip

    # offset counts groups: two pages are the one long page, and no group repeats
    whole = search.text("q", k=10, vector=x[2], dedup=True)[schema.CLIP_ID].to_pylist()
    first = search.text("q", k=4, vector=x[2], dedup=True)[schema.CLIP_ID].to_pylist()
    second = search.text("q", k=6, offset=4, vector=x[2], dedup=True)
    assert first + second[schema.CLIP_ID].to_pylist() == whole
    assert len({group_of.get(c, c) for c in whole}) == 10 and whole[0] == family[0]
    assert second["group_size"].to_pylist() == [1] * 6  # the family was on the first page
    assert search.search_vector(x[2], k=10, dedup=True)[schema.CLIP_ID].to_pylist() == whole

    # a filter applies before the collapse: the group's best member that passes it
    rows = search.text("q", k=3, vector=x[2], where=f"video_id != '{videos[2]}'", dedup=True)
    assert rows[schema.CLIP_ID][0].as_py() in family[1:]
    assert rows["group_size"][0].as_py() == len(family)

    # more like one clip: its own video is excluded, its copies come back as one result
    rows = search.similar_clip(family[0], k=5, dedup=True)
    assert rows[schema.CLIP_ID][0].as_py() in family[1:]
    assert rows["group_size"][0].as_py() == len(family)
    assert not set(rows[schema.CLIP_ID].to_pylist()[1:]) & set(family)
    plain = search.similar_clip(family[0], k=5)[schema.CLIP_ID].to_pylist()
    assert set(plain[:3]) == set(family[1:])  # without dedup the copies fill the top


def _reembed(db: str, video: str, vector: np.ndarray, at: datetime) -> None:
    table = lancedb.connect(db).open_table("videos")
    table.delete(f"video_id = '{video}'")
    table.add(_rows(vector[None], [video], at))


def test_a_stale_group_never_hides_a_clip_embedded_again_since_the_dedup_run(planted_db):
    """Until the next dedup run, a clip whose embedding changed stands alone: its old group
    must not hide it (or be represented by it), and `vidcat check` counts the stale rows."""
    from pipeline.check import check_catalog

    db, x, _, expected = planted_db
    run_dedup(db, "videos", CPU)
    family = next(g for g in expected if g[0] == "v00002#00000")  # 4 members
    source = family[0].split("#")[0]
    rng = np.random.default_rng(7)
    moved = _unit(rng.standard_normal(D))
    _reembed(db, source, moved, T0 + timedelta(days=2))  # the source's video changed
    search = CatalogSearch(db)
    rows = search.search_vector(moved, k=len(x), dedup=True)  # every group
    ids, sizes = rows[schema.CLIP_ID].to_pylist(), rows["group_size"].to_pylist()
    assert ids[0] == family[0] and sizes[0] == 1  # alone, not the family's representative
    # the family's other members are still one group, shown once, by its best member
    shown = [c for c in ids if c in family[1:]]
    assert len(shown) == 1 and sizes[ids.index(shown[0])] == len(family)

    deleted = family[1].split("#")[0]  # a prune: the row of a clip that is gone
    lancedb.connect(db).open_table("videos").delete(f"video_id = '{deleted}'")
    report = check_catalog(db)
    assert report.ok, report.violations
    assert report.info["duplicates_rows_stale"] == 2
    assert report.info["duplicates_rows"] == sum(len(g) for g in expected)

    run_dedup(db, "videos", CPU)  # the next run: nothing stale
    assert check_catalog(db).info["duplicates_rows_stale"] == 0
    assert family[2:] in _groups(db) or sorted(family[2:]) in _groups(db)


def test_duplicates_table_is_tagged_cleaned_and_rolled_back_with_the_catalog(tmp_path):
    """The duplicates table is a catalog table: maintenance tags it with the others (and
    a dedup cleanup never trips on the tagged version), a rollback restores the groups of
    the tag, repairs and checks cover its key, and the next pass recomputes what the
    rollback changed."""
    from pipeline.check import check_catalog, repair_duplicates
    from pipeline.db import catalog_tables
    from pipeline.lifecycle import MaintenanceConfig, maintain, rollback, tag_name

    x, videos, at, expected = _planted(seed=1, n=300, families=10)
    db = str(tmp_path / "db")
    lancedb.connect(db).create_table("videos", _rows(x, videos, at))
    keep_all = DedupConfig(device="cpu", retention=timedelta(0))  # cleans all it may
    run_dedup(db, "videos", keep_all)
    assert _groups(db) == expected
    assert "videos_duplicates" in catalog_tables(db, "videos")
    config = MaintenanceConfig(index=IndexConfig(min_rows_for_index=10**6))
    first = maintain(db, "videos", config=config, now=T0)
    assert first["tagged"]["videos_duplicates"] > 0
    dup_table = lancedb.connect(db).open_table("videos_duplicates")
    assert set(dup_table.tags.list()) == {tag_name(T0)}

    # A later refresh re-embeds a family's source far away; its dedup pass cleans up with
    # retention 0 while an older version is tagged (Lance refuses to delete a tagged one).
    family = next(g for g in expected if len(g) == 4)
    source = family[0].split("#")[0]
    _reembed(db, source, _unit(np.random.default_rng(2).standard_normal(D)), T0 + timedelta(1))
    run_dedup(db, "videos", keep_all)
    after = _groups(db)
    assert family not in after and family[1:] in after
    maintain(db, "videos", config=config, now=T0 + timedelta(days=1))

    rollback(db, "videos", tag_name(T0))
    assert _groups(db) == expected  # the tag's groups, with the tag's clips
    assert check_catalog(db).info["duplicates_rows_stale"] == 0
    report = run_dedup(db, "videos", keep_all)  # the state is a day ahead: compared again
    assert report["mode"] == "incremental" and report["counts"]["changed"] == 1
    assert _groups(db) == expected

    # a duplicate key in the duplicates table: a violation, repaired like the others
    dup_table = lancedb.connect(db).open_table("videos_duplicates")
    dup_table.add(dup_table.search().limit(1).to_arrow())
    assert "duplicate clip_id in videos_duplicates" in check_catalog(db).violations
    removed = repair_duplicates(catalog_tables(db, "videos"), "videos")
    assert removed == {"videos_duplicates": 1}
    # (tags set here by `maintain` alone have no run report; that is the only violation)
    assert list(check_catalog(db).violations) == ["refresh tags no run report names"]

    # A tag of a refresh that had no duplicates table: rolling back to it empties it.
    plain = str(tmp_path / "plain")
    lancedb.connect(plain).create_table("videos", _rows(x, videos, at))
    maintain(plain, "videos", config=config, now=T0)
    run_dedup(plain, "videos", keep_all)
    rollback(plain, "videos", tag_name(T0))
    assert read_duplicates(plain).num_rows == 0
    assert CatalogSearch(plain).search_vector(x[0], k=3, dedup=True)["group_size"].to_pylist() == [
        1,
        1,
        1,
    ]


def test_video_pairs_view():
    """A (5 clips, one in no group) is re-uploaded as R and trimmed to T; X and Y share
    one clip of ten."""
    clips = ["A#0", "A#1", "A#2", "A#3", "T#0", "T#1", "R#0", "R#1", "R#2", "R#3", "X#0", "Y#0"]
    groups = ["g0", "g1", "g2", "g3", "g1", "g2", "g0", "g1", "g2", "g3", "g9", "g9"]
    rows = pa.table(
        {
            schema.CLIP_ID: clips,
            schema.VIDEO_ID: [c[0] for c in clips],
            schema.GROUP_ID: groups,
            schema.VIDEO_CLIPS: pa.array([5] * 4 + [2] * 2 + [4] * 4 + [10, 10], pa.int32()),
        }
    )
    pairs = {(r["video_id_a"], r["video_id_b"]): r for r in duplicate_videos(rows).to_pylist()}
    assert set(pairs) == {("A", "R"), ("A", "T"), ("R", "T")}  # not X-Y: 1 of 10 clips
    assert pairs[("A", "R")]["relation"] == "same"
    assert (pairs[("A", "R")]["fraction_a"], pairs[("A", "R")]["fraction_b"]) == (0.8, 1.0)
    assert pairs[("A", "T")]["relation"] == "contained"  # T is a trim of A
    assert (pairs[("A", "T")]["matched_a"], pairs[("A", "T")]["fraction_b"]) == (2, 1.0)
    assert pairs[("A", "T")]["shared_groups"] == 2


# ---- real videos through the pipeline --------------------------------------------------------


def _encode(path, frames, crf: str = "23") -> str:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = (
            frames[0].shape[1],
            frames[0].shape[0],
            "yuv420p",
        )
        stream.codec_context.thread_count = 1
        stream.options = {"preset": "veryfast", "crf": crf}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return str(path)


@pytest.mark.slow
def test_reencoded_trimmed_and_cropped_copies_group_with_their_originals(ray_cluster, tmp_path):
    """Copies made with PyAV (re-encoded at another bitrate and resolution, trimmed,
    cropped) go through the real pipeline (decode, `tiny-random` embed, sink) and then
    `vidcat embed --dedup`'s pass.

    What this shows, honestly: `tiny-random` has random weights and maps every sample
    video close together, its embedding dominated by the background colour (measured:
    cosine distance <= 5e-5 between a video and its copies, 5e-3 to 3e-2 between videos of
    different backgrounds, ~0 between videos that share one). So the originals here have
    pairwise different backgrounds and eps is 0.002: the test proves that the decode →
    embed → dedup plumbing puts real re-encodes, trims and crops in their original's group
    and keeps other videos apart, not that InternVideo2 is robust to these edits.
    """
    from pipeline.decode import DecodeConfig
    from pipeline.embed import EmbedConfig
    from pipeline.lifecycle import MaintenanceConfig
    from pipeline.models import ModelSpec
    from pipeline.runner import RunConfig, run

    root = tmp_path / "catalog"
    (root / "videos").mkdir(parents=True)
    originals = [v for v in sample_catalog.sample_videos(8) if v.video_id[-1] in "014567"]
    assert len({v.background for v in originals}) == len(originals)
    manifest = {"video_id": [], "uri": []}

    def add(name, frames, crf="23"):
        manifest["video_id"].append(name)
        manifest["uri"].append(_encode(root / "videos" / f"{name}.mp4", frames, crf))

    for v in originals:
        frames = list(sample_catalog.iter_frames(v, 3.0, 160, 120, 25))
        add(v.video_id, frames)
        if v.video_id[-1] in "01":
            small = list(sample_catalog.iter_frames(v, 3.0, 96, 72, 25))
            add(f"{v.video_id}-reencode", small, crf="35")
            add(f"{v.video_id}-trim", frames[10:60])
            add(f"{v.video_id}-crop", [f[12:108, 16:144] for f in frames])
    pq.write_table(pa.table(manifest), root / "manifest.parquet")
    cfg = RunConfig(
        manifest=str(root / "manifest.parquet"),
        db=str(tmp_path / "db"),
        decode=DecodeConfig(),
        embed=EmbedConfig(model=ModelSpec(model="tiny-random"), device="cpu"),
        maintenance=MaintenanceConfig(),
        dedup=DedupConfig(eps=0.002, device="cpu"),
    )
    report = run(cfg)
    assert report.exit_code == 0 and report.dedup["mode"] == "full", report.dedup
    # the pass runs before maintenance: the refresh's tag holds the groups it wrote
    tagged = report.maintenance["tagged"]
    assert tagged["videos_duplicates"] == report.dedup["duplicates_version"]
    groups = [sorted(c.split("#")[0] for c in g) for g in _groups(cfg.db)]
    for v in ("sample-000000", "sample-000001"):
        assert [v, f"{v}-crop", f"{v}-reencode", f"{v}-trim"] in groups
    assert len(groups) == 2  # the other originals are in no group
    pairs = duplicate_videos(read_duplicates(cfg.db))
    assert len(pairs) == 12 and set(pairs["relation"].to_pylist()) == {"same"}
