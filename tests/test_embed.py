import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import schema
from pipeline.embed import EmbedConfig, EmbedStage, signature
from pipeline.models import ModelSpec


@pytest.fixture(scope="module")
def stage():
    return EmbedStage(EmbedConfig(model=ModelSpec(model="tiny-random"), store_vision_tokens=True))


def batch(n=4, failed=(2,), size=224, frames=None) -> pa.Table:
    """An Arrow batch as the decode stage emits it (frames as a tensor column)."""
    rng = np.random.default_rng(0)
    if frames is None:
        frames = rng.integers(0, 256, (n, 4, size, size, 3), dtype=np.uint8)
    return pa.table(
        {
            schema.FRAMES: schema.frames_array(frames),
            schema.STATUS: ["timeout" if i in failed else "ok" for i in range(n)],
            schema.MESSAGE: pa.nulls(n, pa.string()),
            schema.VIDEO_ID: [f"v{i}" for i in range(n)],
        }
    )


def embeddings(out: pa.Table) -> np.ndarray:
    return np.stack(out[schema.EMBEDDING].to_numpy(zero_copy_only=False))


def test_cpu_defaults_to_float32(stage):
    assert stage.device.type == "cpu" and stage.dtype == torch.float32
    assert not stage.model.training


def test_embeds_ok_rows_and_passes_failures_through(stage):
    b = batch()
    frames = schema.frames_ndarray(b[schema.FRAMES]).copy()
    out = stage(b)
    assert schema.FRAMES not in out.column_names
    assert out[schema.EMBEDDING].type == pa.list_(pa.float32(), schema.EMBED_DIM)
    emb = embeddings(out)
    ok = np.asarray(out[schema.STATUS].to_pylist()) == "ok"
    assert np.allclose(np.linalg.norm(emb[ok], axis=1), 1, atol=1e-5)
    assert np.all(emb[~ok] == 0)
    assert out[schema.VIDEO_ID].to_pylist() == ["v0", "v1", "v2", "v3"]
    assert set(out[schema.MODEL].to_pylist()) == {stage.identity}
    assert stage.identity.startswith("tiny-random@")
    assert out[schema.NUM_FRAMES].to_pylist() == [4] * 4
    # Same clip, same embedding whatever else shares the batch.
    alone = stage(batch(1, failed=(), frames=frames[:1]))
    np.testing.assert_allclose(embeddings(alone)[0], emb[0], atol=1e-5)


def test_vision_tokens_round_trip(stage):
    b = batch(2, failed=())
    frames = schema.frames_ndarray(b[schema.FRAMES]).copy()
    out = stage(b)
    shape = tuple(out[schema.VISION_TOKENS_SHAPE][1].as_py())
    raw = np.frombuffer(out[schema.VISION_TOKENS][1].as_py(), dtype=np.int16).reshape(shape)
    tokens = torch.from_numpy(raw.copy()).view(torch.bfloat16).float()
    _, direct = stage.embed_frames(frames)
    assert torch.allclose(tokens, direct[1].bfloat16().float())


def test_model_failure_marks_rows_instead_of_dropping_them(stage):
    b = batch(3, failed=(), size=64)  # wrong frame size: the encoder raises
    out = stage(b)
    assert out[schema.STATUS].to_pylist() == ["embed_error"] * 3
    assert all("tokens" in m or "Error" in m for m in out[schema.MESSAGE].to_pylist())


def test_columns_it_does_not_write_keep_their_types_and_nulls(stage):
    """Metadata passes through as Arrow: an int64 with a null stays exact (a numpy batch
    would make it float64 and round values above 2**53)."""
    b = batch(3, failed=(1,))
    block = b.append_column("year", pa.array([2**60 + 1, None, 7], pa.int64()))
    out = stage(block)
    assert isinstance(out, pa.Table) and schema.FRAMES not in out.column_names
    assert out["year"].type == pa.int64() and out["year"].to_pylist() == [2**60 + 1, None, 7]
    assert out[schema.STATUS].to_pylist() == ["ok", "timeout", "ok"]
    np.testing.assert_allclose(embeddings(out), embeddings(stage(b)), atol=1e-6)
    assert out[schema.VISION_TOKENS_SHAPE].to_pylist()[1] == [0, 0]
    assert (
        len(out[schema.VISION_TOKENS][0].as_py()) > 0 == len(out[schema.VISION_TOKENS][1].as_py())
    )
    failed = stage(batch(2, failed=(), size=64))
    assert failed[schema.STATUS].to_pylist() == ["embed_error"] * 2
    assert all(
        m.startswith(("RuntimeError", "ValueError")) for m in failed[schema.MESSAGE].to_pylist()
    )
    with pytest.raises(TypeError, match="Arrow"):
        stage(b.to_pydict())


def test_model_spec_validation():
    with pytest.raises(ValueError, match="checkpoint"):
        ModelSpec(model="internvideo2-1b")
    with pytest.raises(ValueError, match="unknown model"):
        ModelSpec(model="gpt")
    with pytest.raises(ValueError, match="num_frames"):
        ModelSpec(model="tiny-random", num_frames=17)


def test_signature_tracks_everything_that_changes_embeddings():
    a = signature("m@1", (("num_frames", "4"), ("clip_seconds", "30")))
    assert a == signature("m@1", (("clip_seconds", "30"), ("num_frames", "4")))
    assert a != signature("m@2", (("num_frames", "4"), ("clip_seconds", "30")))
    assert a != signature("m@1", (("num_frames", "8"), ("clip_seconds", "30")))


def test_identity_of_a_local_checkpoint_is_its_digest(tmp_path):
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights")
    ident = ModelSpec(checkpoint=str(ckpt)).identity()
    assert ident.startswith("InternVideo2-Stage2_1B-224p-f4@sha256:")
