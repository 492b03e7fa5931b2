"""`vidcat serve`: the HTTP API against a real uvicorn on loopback."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import quote

import av
import boto3
import lancedb
import media
import numpy as np
import pyarrow as pa
import pytest
from serving import QUERY, client
from synthetic import calibrated_catalog

from pipeline import schema
from pipeline.query import CatalogSearch
from pipeline.recall import KINDS, Params, read_calibration
from pipeline.serve import SearchService, ServeConfig
from pipeline.serve.app import create_app, serve_in_thread
from pipeline.serve.media import parse_range, sniff
from pipeline.storage import S3Config

pytestmark = pytest.mark.slow
TOKEN = "t0k3n-for-the-tests-only"


@contextlib.contextmanager
def serving(catalog, **overrides):
    config = ServeConfig(db=catalog.db, model=catalog.model, device="cpu", **overrides)
    service = SearchService(config)
    with serve_in_thread(create_app(service)) as base, client(base) as http:
        http.service = service
        deadline = time.monotonic() + 60
        while http.get("/api/health").status_code != 200:  # the model loads
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        yield http


@pytest.fixture(scope="module")
def api(served_catalog):
    with serving(served_catalog) as http:
        yield http


@pytest.fixture(scope="module")
def clips(served_catalog):
    return lancedb.connect(served_catalog.db).open_table("videos").to_arrow()


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [r["clip_id"] for r in response.json()["results"]]


# ---- health, schema, table ---------------------------------------------------------------
def test_health_openapi_and_table(api, served_catalog, clips):
    health = api.get("/api/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "ready": True, "model": "ready", "table": "videos"}
    paths = api.get("/api/openapi.json").json()["paths"]
    for path in (
        "/api/health",
        "/api/search",
        "/api/similar",
        "/api/search/video",
        "/api/search/image",
        "/api/clips/{clip_id}/thumbnail",
        "/api/clips/{clip_id}/media",
        "/api/table",
    ):
        assert path in paths, path
    info = api.get("/api/table").json()
    assert info["rows"] == {"videos": clips.num_rows, "videos_errors": 0,
                            "videos_thumbnails": clips.num_rows}  # fmt: skip
    meta = {c["name"]: c["kind"] for c in info["metadata_columns"]}
    assert meta == {"caption": "string", "category": "string", "duration_s": "float"}
    assert info["fts_columns"] == ["caption", "category"]
    assert info["last_run"]["counts"]["clips_embedded"] == clips.num_rows
    assert info["embedded_with"].startswith("tiny-random")
    assert "embedding" not in {f["name"] for f in info["schema"]}
    text = json.dumps(info)
    assert served_catalog.db not in text and str(served_catalog.root) not in text  # no paths


# ---- text search -------------------------------------------------------------------------
def test_text_search_pages_and_matches_the_library(api, served_catalog, clips):
    full = api.get("/api/search", params={"q": "a red circle", "k": 6})
    body = full.json()
    assert len(body["results"]) == 6 and body["took_ms"] >= 0 and body["next_offset"] == 6
    first = body["results"][0]
    assert set(first) >= {"clip_id", "video_id", "clip_index", "clip_start_s", "clip_end_s",
                          "score", "uri", "metadata", "thumbnail_url", "media_url"}  # fmt: skip
    assert set(first["metadata"]) == {"caption", "category", "duration_s"}
    with CatalogSearch(served_catalog.db, model=served_catalog.model, device="cpu") as lib:
        expected = lib.text("a red circle", k=6)[schema.CLIP_ID].to_pylist()
    assert ids(full) == expected
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    page2 = api.get("/api/search", params={"q": "a red circle", "k": 3, "offset": 3})
    assert ids(page2) == expected[3:6]
    last = api.get("/api/search", params={"q": "a red circle", "k": 6, "offset": 6})
    assert len(ids(last)) == clips.num_rows - 6 and last.json()["next_offset"] is None
    # A table this small has no vector index: every row is compared, and the answer says so.
    assert body["search"] == {"kind": "text", "nprobes": None, "ef": None,
                              "refine_factor": None, "exact": True, "expected_recall": 1.0,
                              "source": "no index"}  # fmt: skip


def test_structured_filters(api, clips):
    r = api.get("/api/search", params={"q": "shape", "k": 20, "filter": "category:eq:circle"})
    circles = [x for x in clips.to_pylist() if x["category"] == "circle"]
    assert len(ids(r)) == len(circles) > 0
    assert {x["metadata"]["category"] for x in r.json()["results"]} == {"circle"}
    # Two filters must both hold; `in` and `contains` work on text.
    r = api.get("/api/search", params=[("q", "shape"), ("k", 20),
                                       ("filter", "category:in:circle,square"),
                                       ("filter", "caption:contains:moving")])  # fmt: skip
    assert {x["metadata"]["category"] for x in r.json()["results"]} <= {"circle", "square"}
    # A value with a quote is a literal, not SQL.
    r = api.get("/api/search", params={"q": "x", "filter": "category:eq:a' OR '1'='1"})
    assert r.status_code == 200 and r.json()["results"] == []
    for bad, message in (
        ("nope:eq:1", "no filterable column 'nope'"),
        ("embedding:eq:1", "no filterable column 'embedding'"),
        ("duration_s:gt:long", "is not a float"),
        ("duration_s:contains:1", "takes eq, ne"),
        ("category", "column:op:value"),
    ):
        r = api.get("/api/search", params={"q": "x", "filter": bad})
        assert r.status_code == 400 and message in r.json()["error"], (bad, r.text)


def test_raw_sql_only_when_the_server_allows_it(api, served_catalog):
    r = api.get("/api/search", params={"q": "x", "where": "category = 'circle'"})
    assert r.status_code == 400 and "raw SQL filters are off" in r.json()["error"]
    with serving(served_catalog, allow_sql=True, preload_model=False) as sql:
        r = sql.get("/api/search", params={"q": "x", "k": 20, "where": "category = 'circle'"})
        assert r.status_code == 200
        assert {x["metadata"]["category"] for x in r.json()["results"]} == {"circle"}
        r = sql.get("/api/search", params={"q": "x", "where": "1=1; DROP TABLE videos"})
        assert r.status_code == 400 and "one SQL expression" in r.json()["error"]
    assert lancedb.connect(served_catalog.db).open_table("videos").count_rows() > 0


def test_rerank_and_hybrid(api, clips):
    r = api.get("/api/search", params={"q": "a red circle", "k": 4, "rerank": "true"})
    results = r.json()["results"]
    assert r.status_code == 200 and all(x["rerank_score"] is not None for x in results)
    reranked = [x["rerank_score"] for x in results]
    assert reranked == sorted(reranked, reverse=True)
    # Hybrid: a word only one caption has is found by the full-text side, whatever the
    # (random) model thinks of it.
    target = clips.to_pylist()[3]
    word = target["caption"].split()[1]  # its colour
    hybrid = api.get("/api/search", params={"q": word, "k": 20, "mode": "hybrid"}).json()
    top = hybrid["results"][0]
    assert word in top["metadata"]["caption"]
    assert top["score"] > 0 and "cosine" in top
    r = api.get("/api/search", params={"q": "x", "mode": "words"})
    assert r.status_code == 400


# ---- similar -----------------------------------------------------------------------------
def test_similar_by_clip_and_by_video(api, clips):
    clip = clips.to_pylist()[0]
    by_clip = api.get("/api/similar", params={"clip_id": clip["clip_id"], "k": 5})
    assert len(ids(by_clip)) == 5
    assert clip["video_id"] not in {x["video_id"] for x in by_clip.json()["results"]}
    by_video = api.get("/api/similar", params={"video_id": clip["video_id"], "k": 5})
    assert len(ids(by_video)) == 5
    assert api.get("/api/similar", params={"clip_id": "nope"}).status_code == 400
    both = api.get("/api/similar", params={"clip_id": "a", "video_id": "b"})
    assert both.status_code == 400 and "exactly one" in both.json()["error"]
    assert api.get("/api/similar").status_code == 400


# ---- near-duplicates ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dedup_api(dedup_catalog):
    catalog, _ = dedup_catalog
    with serving(catalog) as http:
        yield http


def sizes(response) -> list[int | None]:
    return [r["group_size"] for r in response.json()["results"]]


def test_dedup_one_result_per_group_pages_and_composes(dedup_api, dedup_catalog):
    catalog, order = dedup_catalog  # groups: ranks (0, 2, 3) and (5, 6) of QUERY
    info = dedup_api.get("/api/table").json()
    assert info["dedup"] is True and info["rows"]["videos_duplicates"] == 5
    plain = dedup_api.get("/api/search", params={"q": QUERY, "k": 8})
    assert ids(plain) == order[:8] and sizes(plain) == [None] * 8

    search = {"q": QUERY, "dedup": "true"}
    r = dedup_api.get("/api/search", params={**search, "k": 4})
    assert ids(r) == [order[0], order[1], order[4], order[5]]  # best member of each group
    assert sizes(r) == [3, 1, 1, 2] and r.json()["next_offset"] == 4
    with CatalogSearch(catalog.db, model=catalog.model, device="cpu") as lib:
        assert ids(r) == lib.text(QUERY, k=4, dedup=True)[schema.CLIP_ID].to_pylist()
        hybrid = lib.text(QUERY, k=4, mode="hybrid", dedup=True)[schema.CLIP_ID].to_pylist()
    # offset counts groups: the next page starts after the last group shown
    r = dedup_api.get("/api/search", params={**search, "k": 4, "offset": 4})
    assert ids(r) == [order[7]] and sizes(r) == [1] and r.json()["next_offset"] is None

    # filters apply first: without the best member's video, the group's next one stands in
    video = order[0].split("#")[0]
    r = dedup_api.get("/api/search", params={**search, "k": 2, "filter": f"video_id:ne:{video}"})
    assert ids(r) == [order[1], order[2]] and sizes(r) == [1, 3]
    r = dedup_api.get("/api/search", params={**search, "k": 4, "mode": "hybrid"})
    assert ids(r) == hybrid and None not in sizes(r)
    r = dedup_api.get("/api/search", params={**search, "k": 4, "rerank": "true"})
    body = r.json()["results"]
    assert r.status_code == 200 and all(x["rerank_score"] is not None for x in body)
    assert len(body) == 4 and None not in sizes(r)
    assert sum(x["clip_id"] in {order[0], order[2], order[3]} for x in body) <= 1  # one/group
    assert sum(x["clip_id"] in {order[5], order[6]} for x in body) <= 1

    # more like one clip: its copies come back as one result, their best
    r = dedup_api.get("/api/similar", params={"clip_id": order[0], "k": 5, "dedup": "true"})
    shown = ids(r)
    assert sum(c in (order[2], order[3]) for c in shown) == 1
    assert sizes(r)[[c in (order[2], order[3]) for c in shown].index(True)] == 3
    assert order[0] not in shown
    r = dedup_api.get("/api/similar", params={"video_id": video, "k": 7, "dedup": "true"})
    assert len(ids(r)) == 5 and sorted(sizes(r)) == [1, 1, 1, 2, 3]  # 7 clips, 5 groups

    # an upload: the image path of the model, then the same collapse
    thumb = dedup_api.get(f"/api/clips/{quote(order[0], safe='')}/thumbnail").content
    r = dedup_api.post("/api/search/image", content=thumb, params={"k": 8, "dedup": "true"})
    assert r.status_code == 200 and len(ids(r)) == 5 and sorted(sizes(r)) == [1, 1, 1, 2, 3]


def test_dedup_without_a_duplicates_table_is_a_clear_400(api, served_catalog):
    assert api.get("/api/table").json()["dedup"] is False
    for r in (
        api.get("/api/search", params={"q": "a red circle", "dedup": "true"}),
        api.get("/api/search", params={"q": "a red circle", "dedup": "true", "rerank": "true"}),
        api.get("/api/similar", params={"video_id": "sample-000000", "dedup": "true"}),
        # refused before the body is read: no upload is staged for a query that cannot run
        api.post("/api/search/image", content=b"\0" * 2048, params={"dedup": "true"}),
    ):
        assert r.status_code == 400, r.text
        message = r.json()["error"]
        assert "run `vidcat dedup` first" in message and "near-duplicates table" in message
        assert served_catalog.db not in message  # the server's paths stay hidden
    assert api.get("/api/search", params={"q": "x", "dedup": "maybe"}).status_code == 400


# ---- uploads -----------------------------------------------------------------------------
def test_upload_a_video_and_an_image(api, served_catalog, clips):
    row = clips.to_pylist()[2]
    video = (served_catalog.root / row["uri"]).read_bytes()
    r = api.post("/api/search/video", content=video, params={"k": 3})
    top = r.json()["results"][0]
    assert r.status_code == 200 and top["video_id"] == row["video_id"] and top["score"] > 0.999
    # The thumbnail is a JPEG of a frame of that video: as an image query it is accepted.
    thumb = api.get(f"/api/clips/{quote(row['clip_id'], safe='')}/thumbnail").content
    r = api.post("/api/search/image", content=thumb, params={"k": 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    png = io.BytesIO()
    with av.open(io.BytesIO(thumb), format="jpeg_pipe") as src:
        frame = next(src.decode(video=0))
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frame.width, frame.height, "rgb24"
    png.write(b"".join(bytes(p) for p in codec.encode(frame.reformat(format="rgb24"))))
    assert api.post("/api/search/image", content=png.getvalue()).status_code == 200


def test_uploads_are_sniffed_and_capped(api, served_catalog, clips, tmp_path):
    video = (served_catalog.root / clips.to_pylist()[0]["uri"]).read_bytes()
    thumb = api.get(
        f"/api/clips/{quote(clips.to_pylist()[0]['clip_id'], safe='')}/thumbnail"
    ).content
    cases = [
        ("/api/search/image", video, 415, "video data"),  # by content, not by name
        ("/api/search/video", thumb, 415, "image data"),
        ("/api/search/video", b"#!/bin/sh\nrm -rf /\n" * 20, 415, "not a known video"),
        ("/api/search/image", b"", 415, "empty"),
    ]
    for path, body, status, message in cases:
        r = api.post(path, content=body, headers={"Content-Type": "video/mp4"})
        assert r.status_code == status and message in r.json()["error"], (path, r.text)
    # A file that looks like an MP4 but is not one: the isolated decoder says so; the
    # message names no server path.
    fake = b"\x00\x00\x00\x18ftypisom" + os.urandom(4000)
    r = api.post("/api/search/video", content=fake)
    assert r.status_code == 400 and "cannot decode query video" in r.json()["error"]
    assert "<upload>" in r.json()["error"] and "/tmp" not in r.json()["error"]
    with serving(served_catalog, max_upload_bytes=4096, preload_model=False) as small:
        big = video + b"\x00" * 8192
        r = small.post("/api/search/video", content=big)
        assert r.status_code == 413
        # Without a Content-Length (chunked), the cap holds as the body arrives.
        r = small.post("/api/search/video", content=iter([big[:3000], big[3000:]]))
        assert r.status_code == 413
        assert os.listdir(small.service.upload_dir) == []  # nothing left behind
    assert os.listdir(api.service.upload_dir) == []


def test_sniffing_and_ranges():
    assert sniff(b"\x89PNG\r\n\x1a\n" + b"\0" * 20) == ("image", ".png")
    assert sniff(b"RIFF\0\0\0\0WEBPVP8 ") == ("image", ".webp")
    assert sniff(b"\0\0\0\x20ftypmp42") == ("video", ".mp4")
    assert sniff(b"\x1a\x45\xdf\xa3\x01") == ("video", ".mkv")
    assert sniff(b"<html>") is None and sniff(b"BM") is None
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=50-500", 100) == (50, 99)
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole file


# ---- thumbnails and media ----------------------------------------------------------------
def test_thumbnail_and_media_with_ranges(api, served_catalog, clips):
    row = clips.to_pylist()[1]
    thumb = api.get(f"/api/clips/{quote(row['clip_id'], safe='')}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:3] == b"\xff\xd8\xff"
    data = (served_catalog.root / row["uri"]).read_bytes()
    url = f"/api/clips/{quote(row['clip_id'], safe='')}/media"
    whole = api.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/mp4"
    part = api.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert api.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    assert api.get("/api/clips/nope/thumbnail").status_code == 404


@pytest.fixture(scope="module")
def hostile(served_catalog, tmp_path_factory, s3_server):
    """A copy of the catalog with rows whose URIs point outside the roots (a tampered or
    old table), and one whose video is on S3."""
    root = tmp_path_factory.mktemp("hostile")
    shutil.copytree(served_catalog.db, root / "lancedb")
    outside = root / "outside.mp4"
    media.write_video(outside, 10)
    endpoint, bucket = s3_server, "hostile-catalog"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    s3 = S3Config(endpoint_url=endpoint)
    video = next((served_catalog.root / "videos").glob("*.mp4")).read_bytes()
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=bucket, Key="v/s3.mp4", Body=video)
    table = lancedb.connect(str(root / "lancedb")).open_table("videos")
    template = table.search().limit(1).to_arrow().to_pylist()[0]
    evil = {
        "etc": "/etc/passwd",
        "file": "file:///etc/passwd",
        "dotdot": "../../../../../../etc/passwd",
        "outside": str(outside),
        "s3": f"s3://{bucket}/v/s3.mp4",
    }
    rows = [
        {**template, "clip_id": f"evil-{name}#0", "video_id": f"evil-{name}", "uri": uri}
        for name, uri in evil.items()
    ]
    table.add(pa.Table.from_pylist(rows, schema=table.schema))
    return root, s3, video, bucket


def test_nothing_outside_the_roots_is_served(served_catalog, hostile):
    root, s3, _, bucket = hostile
    catalog = type(served_catalog)(served_catalog.root, str(root / "lancedb"), served_catalog.model)
    with serving(catalog, s3=s3, preload_model=False) as http:
        for name in ("etc", "file", "dotdot", "outside"):
            r = http.get(f"/api/clips/evil-{name}%230/media")
            assert r.status_code == 404, name
            assert "passwd" not in r.text and str(root) not in r.text
        for attempt in (
            "/api/clips/..%2F..%2F..%2Fetc%2Fpasswd/media",
            "/api/clips/../../etc/passwd/media",
            "/api/clips/%2e%2e%2f%2e%2e%2fetc%2fpasswd/media",
            "/api/clips/%2Fetc%2Fpasswd/media",
            "/static/../../../../etc/passwd",
            "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        ):
            r = http.get(attempt)
            assert r.status_code in (400, 404), (attempt, r.status_code)
            assert "root:" not in r.text, attempt
        # Search results never show a path outside the roots.
        r = http.get("/api/similar", params={"video_id": "evil-etc", "k": 50})
        shown = {x["video_id"]: x["uri"] for x in r.json()["results"]}
        for name in ("file", "dotdot", "outside"):
            assert shown[f"evil-{name}"] is None
        assert shown["evil-s3"] == f"s3://{bucket}/v/s3.mp4"


def test_s3_videos_are_streamed_with_ranges(served_catalog, hostile):
    root, s3, video, _ = hostile
    catalog = type(served_catalog)(served_catalog.root, str(root / "lancedb"), served_catalog.model)
    with serving(catalog, s3=s3, preload_model=False) as http:
        url = "/api/clips/evil-s3%230/media"
        whole = http.get(url)
        assert whole.status_code == 200 and whole.content == video
        part = http.get(url, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == video[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(video)}"
        headers = str(part.headers).lower()
        assert "x-amz" not in headers and os.environ["AWS_SECRET_ACCESS_KEY"] not in headers


# ---- access ------------------------------------------------------------------------------
def test_a_token_guards_the_api(served_catalog):
    with pytest.raises(ValueError, match="needs a token"):
        ServeConfig(db=served_catalog.db, host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 16"):
        ServeConfig(db=served_catalog.db, token="short")
    with serving(served_catalog, token=TOKEN, preload_model=False) as http:
        assert http.get("/api/health").status_code == 200  # probes need no token
        assert http.get("/").status_code == 200  # the page itself holds no data
        for path in ("/api/table", "/api/search?q=x", "/metrics", "/api/openapi.json"):
            r = http.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert http.get("/api/table", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = http.get("/api/table", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert http.get("/?token=wrong").status_code == 401
        login = http.get(f"/?token={TOKEN}", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert http.get("/api/table").status_code == 200  # the cookie now
        assert TOKEN not in json.dumps(http.get("/api/table").json())


def test_host_header_and_cors(api, served_catalog):
    assert api.get("/api/health", headers={"Host": "evil.example"}).status_code == 400
    assert api.get("/api/health", headers={"Host": "localhost:1"}).status_code == 200
    r = api.get("/api/table", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    origin = "https://dash.example"
    with serving(served_catalog, cors_origins=(origin,), preload_model=False) as http:
        r = http.get("/api/table", headers={"Origin": origin})
        assert r.headers["access-control-allow-origin"] == origin
        r = http.get("/api/table", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_page_and_security_headers(api):
    page = api.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert api.get("/static/app.js").status_code == 200
    assert api.get("/api/table").headers["cache-control"] == "no-store"


# ---- overload, timeouts, metrics ---------------------------------------------------------
def test_a_full_model_queue_answers_429_and_a_late_job_503(served_catalog, clips):
    video = (served_catalog.root / clips.to_pylist()[0]["uri"]).read_bytes()
    with serving(served_catalog, model_queue=0, request_timeout_s=20) as http:
        statuses: list[int] = []

        def upload():
            statuses.append(http.post("/api/search/video", content=video).status_code)

        threads = [threading.Thread(target=upload) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert 429 in statuses and 200 in statuses and set(statuses) <= {200, 429}
        r = http.post("/api/search/video", content=video)
        assert r.status_code in (200, 429)
        assert http.get("/api/health").status_code == 200
        metrics = http.get("/metrics").text
        assert (
            'vidcat_http_request_seconds_count{method="POST",route="/api/search/video",status="429"}'
            in metrics
        )
        assert "vidcat_model_seconds_count" in metrics
    with serving(served_catalog, request_timeout_s=0.05) as http:
        r = http.post("/api/search/video", content=video)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "longer than" in r.json()["error"]
        time.sleep(1)
        assert http.get("/api/health").status_code == 200


def test_metrics_count_routes_and_cache(api):
    for _ in range(3):
        api.get("/api/search", params={"q": "metrics please", "k": 2})
    text = api.get("/metrics").text
    assert 'route="/api/search",status="200"' in text
    hits = [line for line in text.splitlines() if line.startswith("vidcat_text_cache_hits_total ")]
    assert hits and float(hits[0].split()[1]) >= 2
    assert "vidcat_search_seconds_bucket" in text


# ---- read only, and the command line ------------------------------------------------------
def _tree(path: str) -> dict[str, int]:
    return {
        os.path.relpath(os.path.join(d, f), path): os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(path)
        for f in files
    }


def test_serving_writes_nothing(served_catalog, clips):
    before = _tree(served_catalog.db)
    with serving(served_catalog) as http:
        http.get("/api/table")
        http.get("/api/search", params={"q": "x", "mode": "hybrid"})
        http.get("/api/similar", params={"clip_id": clips.to_pylist()[0]["clip_id"]})
        http.get(f"/api/clips/{quote(clips.to_pylist()[0]['clip_id'], safe='')}/media")
    assert _tree(served_catalog.db) == before


def test_the_command_line(served_catalog, tmp_path):
    vidcat = [sys.executable, "-m", "jobs.cli", "serve"]
    env = {**os.environ, "VIDCAT_SERVE_TOKEN": ""}
    r = subprocess.run([*vidcat, "--db", str(tmp_path / "none")], capture_output=True,
                       text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert not (tmp_path / "none").exists()
    r = subprocess.run([*vidcat, "--db", served_catalog.db, "--host", "0.0.0.0"],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "needs a token" in r.stderr
    r = subprocess.run([*vidcat, "--db", served_catalog.db, "--recall", "2", "--no-model"],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "recall must be a number" in r.stderr
    with socket.socket() as taken:  # a port another process holds
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        r = subprocess.run([*vidcat, "--db", served_catalog.db, "--port", port, "--no-model"],
                           capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("error: could not serve")
    proc = subprocess.Popen(
        [*vidcat, "--db", served_catalog.db, "--port", "0", "--lazy-model"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if line.startswith("vidcat serve: "):
                url = line.split(": ", 1)[1].strip()
        assert url and url.startswith("http://127.0.0.1:")
        with client(url) as http:
            assert http.get("api/health").json()["model"] == "not loaded"
            assert len(ids(http.get("api/search", params={"q": "a circle", "k": 2}))) == 2
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert proc.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in proc.stderr.read()


# ---- calibrated search parameters and recall ---------------------------------------------
@pytest.fixture(scope="module")
def calibrated(served_catalog, clips, tmp_path_factory):
    """A server over a table with a calibrated vector index (tests/synthetic.py), its rows
    recorded as embedded by the served model: (the table, the client, the catalog)."""
    identity = clips[schema.MODEL][0].as_py()
    root = tmp_path_factory.mktemp("calibrated")
    table = calibrated_catalog(root / "lancedb", model=identity)
    catalog = dataclasses.replace(served_catalog, root=root, db=str(root / "lancedb"))
    with serving(catalog) as http:
        yield table, http, catalog


def png_image(size: int = 64) -> bytes:
    rgb = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = size, size, "rgb24"
    return b"".join(bytes(p) for p in codec.encode(frame))


def test_every_search_kind_uses_the_calibration_and_says_so(calibrated, served_catalog, clips):
    table, http, _ = calibrated
    stored = read_calibration(table)

    def used(response, kind: str) -> dict:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["results"], kind
        search, want = body["search"], stored.choice(kind)
        assert (search["kind"], search["source"]) == (kind, "calibrated")
        assert Params.from_dict(search) == want.params
        assert search["expected_recall"] == pytest.approx(want.recall)
        assert want.recall >= stored.target  # what the calibration promised
        return search

    used(http.get("/api/search", params={"q": "a red thing", "k": 5}), "text")
    hybrid = http.get("/api/search", params={"q": "yellow", "k": 5, "mode": "hybrid"})
    used(hybrid, "text")
    # (reciprocal rank fusion ties a full-text-only row with a vector-only one)
    assert any("yellow" in r["metadata"]["caption"] for r in hybrid.json()["results"])
    clip = table.search().select(["clip_id", "video_id"]).limit(1).to_arrow().to_pylist()[0]
    used(http.get("/api/similar", params={"clip_id": clip["clip_id"], "k": 5}), "similar")
    used(http.get("/api/similar", params={"video_id": clip["video_id"], "k": 5}), "similar")
    used(http.post("/api/search/image", content=png_image(), params={"k": 3}), "video")
    video = (served_catalog.root / clips.to_pylist()[0]["uri"]).read_bytes()
    used(http.post("/api/search/video", content=video, params={"k": 3}), "video")
    # The table description says what each kind uses by default.
    info = http.get("/api/table").json()["search"]
    assert info["target_recall"] == stored.target and info["default_recall"] is None
    for kind in KINDS:
        assert Params.from_dict(info["kinds"][kind]) == stored.choice(kind).params


def test_a_request_trades_recall_for_speed(calibrated, served_catalog):
    table, http, catalog = calibrated
    stored = read_calibration(table)
    search = {"q": "a red thing", "k": 5}
    exact = http.get("/api/search", params={**search, "recall": "exact"}).json()
    assert exact["search"]["exact"] is True and exact["search"]["expected_recall"] == 1.0
    assert exact["search"]["source"] == "override"
    low = http.get("/api/search", params={**search, "recall": "0.5"}).json()["search"]
    want = stored.cheapest("text", 0.5)
    assert low["source"] == "override" and Params.from_dict(low) == want.params
    assert low["expected_recall"] == pytest.approx(want.recall) and want.recall >= 0.5
    clip = table.search().select(["clip_id"]).limit(1).to_arrow()["clip_id"][0].as_py()
    fast = http.get("/api/similar", params={"clip_id": clip, "recall": "fast"}).json()["search"]
    assert fast["kind"] == "similar" and fast["expected_recall"] >= 0.8
    image = http.post("/api/search/image", content=png_image(), params={"recall": "exact"})
    assert image.json()["search"]["exact"] is True
    for bad in ("2", "0", "fastest", "nan"):
        r = http.get("/api/search", params={**search, "recall": bad})
        assert r.status_code == 400 and "recall must be" in r.json()["error"], (bad, r.text)
    r = http.post("/api/search/image", content=png_image(), params={"recall": "nope"})
    assert r.status_code == 400 and "recall must be" in r.json()["error"]
    # A filter on an indexed key that few rows pass is scanned exactly (recall 1); one on a
    # column without a scalar index keeps the vector index (an exact scan would read it all).
    one = http.get("/api/search", params={**search, "filter": "video_id:eq:v000007"})
    assert ids(one) and one.json()["search"]["source"] == "filter leaves 4 rows"
    rare = http.get(
        "/api/search", params={**search, "filter": "caption:eq:clip 7 of a yellow thing"}
    )
    assert ids(rare) and rare.json()["search"]["source"] == "calibrated"
    # A server's default recall applies to requests that name none.
    with serving(catalog, recall="exact", preload_model=False) as exacting:
        r = exacting.get("/api/similar", params={"clip_id": clip, "k": 3}).json()
        assert r["search"]["exact"] is True and r["search"]["source"] == "override"
        assert exacting.get("/api/table").json()["search"]["default_recall"] == "exact"
    with pytest.raises(ValueError, match="recall"):
        ServeConfig(db=served_catalog.db, recall=1.5)
