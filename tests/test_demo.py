"""The demo's own decisions: the tokenizer checked before any work, the catalog regenerated
when `--num-videos` changes, the arguments handed on. Embedding and querying are stubbed
(they have their own tests); the sample catalog is real, a few tiny videos."""

import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import demo, query
from models.internvideo2.tokenizer import write_vocab
from pipeline.sample_catalog import make_sample_catalog

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = "/models/InternVideo2-stage2_1b-224p-f4.pt"


@pytest.fixture
def calls(monkeypatch):
    """Records the catalog sizes made and the embed/query argument lists."""
    seen = {"catalog": [], "embed": [], "query": [], "index": []}

    def catalog(out, num_videos):
        seen["catalog"].append(num_videos)
        small = {"seconds": 0.5, "width": 32, "height": 32, "fps": 8, "workers": 1}
        return make_sample_catalog(out, num_videos=num_videos, **small)

    monkeypatch.setattr(demo, "make_sample_catalog", catalog)
    monkeypatch.setattr(demo.embed_catalog, "main", lambda argv: seen["embed"].append(argv) or 0)
    monkeypatch.setattr(query, "main", lambda argv: seen["query"].append(argv) or 0)
    monkeypatch.setattr(demo, "index_text", lambda db: seen["index"].append(db))
    return seen


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_checkpoint_without_tokenizer_offline_is_refused_before_any_work(
    tmp_path, calls, capsys, no_network
):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # conftest
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--out", str(tmp_path), "--checkpoint", CHECKPOINT])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE" in err and "--tokenizer" in err and "TOKENIZER=" in err
    assert calls == {"catalog": [], "embed": [], "query": [], "index": []}
    assert not (tmp_path / "catalog").exists() and no_network == []


def test_unusable_tokenizer_is_refused_before_any_work(tmp_path, calls, capsys):
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--out", str(tmp_path), "--checkpoint", CHECKPOINT, "--tokenizer", "/nope"])
    assert exit_.value.code == 2
    assert "no WordPiece vocabulary at '/nope'" in capsys.readouterr().err
    assert calls == {"catalog": [], "embed": [], "query": [], "index": []}


def test_tokenizer_reaches_the_query(tmp_path, calls):
    tok = tmp_path / "bert"
    tok.mkdir()
    write_vocab(tok / "vocab.txt", ["red", "circle"])
    argv = ["--out", str(tmp_path / "out"), "--num-videos", "1", "--checkpoint", CHECKPOINT]
    assert demo.main([*argv, "--tokenizer", str(tok)]) == 0
    (embed,), (q,) = calls["embed"], calls["query"]
    assert _after(embed, "--checkpoint") == _after(q, "--checkpoint") == CHECKPOINT
    assert _after(q, "--tokenizer") == str(tok)


def test_checkpoint_without_tokenizer_online_goes_ahead(tmp_path, calls, monkeypatch, no_network):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the query would fetch it
    argv = ["--out", str(tmp_path), "--num-videos", "1", "--checkpoint", CHECKPOINT]
    assert demo.main(argv) == 0
    (q,) = calls["query"]
    assert "--tokenizer" not in q and calls["catalog"] == [1]
    assert no_network == []  # online mode, yet the demo itself fetched nothing


def test_catalog_is_remade_when_num_videos_changes(tmp_path, calls):
    manifest = tmp_path / "catalog" / "manifest.parquet"
    for n in (2, 3, 3):
        assert demo.main(["--out", str(tmp_path), "--num-videos", str(n)]) == 0
        assert pq.read_metadata(manifest).num_rows == n
    assert calls["catalog"] == [2, 3]  # the second run with 3 reuses the catalog
    # The table follows a catalog the run made (videos that left it are deleted); a run
    # that finds its catalog in place leaves the table's other rows alone.
    assert ["--prune" in argv for argv in calls["embed"]] == [True, True, False]
    # Without a checkpoint the bundled demo-shapes model embeds and answers the query.
    assert all(_after(argv, "--model") == "demo-shapes" for argv in calls["embed"])
    assert all(_after(argv, "--model") == "demo-shapes" for argv in calls["query"])


def test_random_test_model_on_request(tmp_path, calls, capsys):
    assert demo.main(["--out", str(tmp_path), "--num-videos", "1", "--model", "tiny-random"]) == 0
    (embed,), (q,) = calls["embed"], calls["query"]
    assert _after(embed, "--model") == _after(q, "--model") == "tiny-random"
    assert "scores are meaningless" in capsys.readouterr().out


def test_default_catalog_holds_the_default_query():
    # The demo's query names a video its default catalog has, so the top hit can show it.
    from pipeline.sample_catalog import sample_videos

    defaults = demo.build_parser().parse_args([])
    captions = [v.caption for v in sample_videos(defaults.num_videos)]
    assert defaults.query in captions


def test_catalog_is_current_decision(tmp_path):
    manifest = tmp_path / "manifest.parquet"
    assert not demo.catalog_is_current(manifest, 2)  # missing
    manifest.write_bytes(b"not parquet")
    assert not demo.catalog_is_current(manifest, 2)  # unreadable: made again
    make_sample_catalog(str(tmp_path), num_videos=2, seconds=0.5, width=32, height=32, fps=8)
    assert demo.catalog_is_current(manifest, 2)
    assert not demo.catalog_is_current(manifest, 3)


def test_make_demo_passes_tokenizer():
    def dry_run(*args: str) -> str:
        cmd = ["make", "-n", "--no-print-directory", "-C", str(ROOT), "demo", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return " ".join(out.replace("\\\n", " ").split())  # join continued lines

    out = dry_run(f"CHECKPOINT={CHECKPOINT}", "TOKENIZER=/models/bert-large-uncased")
    assert f"--checkpoint {CHECKPOINT} --tokenizer /models/bert-large-uncased" in out
    assert "--tokenizer" not in dry_run()
