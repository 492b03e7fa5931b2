import numpy as np
import pyarrow as pa
import pytest
import torch
from ray.data.block import BlockAccessor

from pipeline import schema
from pipeline.embed import EmbedConfig, EmbedStage, ModelSpec, signature


@pytest.fixture(scope="module")
def stage():
    return EmbedStage(EmbedConfig(model=ModelSpec(model="tiny-random"), store_vision_tokens=True))


def batch(n=4, failed=(2,), size=224):
    rng = np.random.default_rng(0)
    status = np.array(["ok"] * n, dtype=object)
    status[list(failed)] = "timeout"
    return {
        schema.FRAMES: rng.integers(0, 256, (n, 4, size, size, 3), dtype=np.uint8),
        schema.STATUS: status,
        schema.MESSAGE: np.array([""] * n, dtype=object),
        schema.VIDEO_ID: np.array([f"v{i}" for i in range(n)], dtype=object),
    }


def test_cpu_defaults_to_float32(stage):
    assert stage.device.type == "cpu" and stage.dtype == torch.float32
    assert not stage.model.training


def test_embeds_ok_rows_and_passes_failures_through(stage):
    b = batch()
    frames = b[schema.FRAMES].copy()
    out = stage(b)
    assert schema.FRAMES not in out
    emb = out[schema.EMBEDDING]
    assert emb.shape == (4, schema.EMBED_DIM) and emb.dtype == np.float32
    ok = out[schema.STATUS] == "ok"
    assert np.allclose(np.linalg.norm(emb[ok], axis=1), 1, atol=1e-5)
    assert np.all(emb[~ok] == 0)
    assert out[schema.VIDEO_ID].tolist() == ["v0", "v1", "v2", "v3"]
    assert set(out[schema.MODEL]) == {stage.identity} and stage.identity.startswith("tiny-random@")
    assert out[schema.NUM_FRAMES].tolist() == [4] * 4
    # Same clip, same embedding whatever else shares the batch.
    alone = stage({**batch(1, failed=()), schema.FRAMES: frames[:1]})
    np.testing.assert_allclose(alone[schema.EMBEDDING][0], emb[0], atol=1e-5)


def test_vision_tokens_round_trip(stage):
    b = batch(2, failed=())
    frames = b[schema.FRAMES].copy()
    out = stage(b)
    shape = tuple(out[schema.VISION_TOKENS_SHAPE][1])
    raw = np.frombuffer(out[schema.VISION_TOKENS][1], dtype=np.int16).reshape(shape)
    tokens = torch.from_numpy(raw.copy()).view(torch.bfloat16).float()
    _, direct = stage.embed_frames(frames)
    assert torch.allclose(tokens, direct[1].bfloat16().float())


def test_model_failure_marks_rows_instead_of_dropping_them(stage):
    b = batch(3, failed=(), size=64)  # wrong frame size: the encoder raises
    out = stage(b)
    assert out[schema.STATUS].tolist() == ["embed_error"] * 3
    assert all("tokens" in m or "Error" in m for m in out[schema.MESSAGE])


def test_arrow_batches_come_back_as_arrow_with_the_same_rows(stage):
    """The pipeline passes Arrow blocks: columns the stage does not write keep their types
    and nulls, and the embeddings equal the numpy path's."""
    b = batch(3, failed=(1,))
    block = BlockAccessor.batch_to_block({k: v.copy() for k, v in b.items()})
    block = block.append_column("year", pa.array([2**60 + 1, None, 7], pa.int64()))
    out = stage(block)
    assert isinstance(out, pa.Table) and schema.FRAMES not in out.column_names
    assert out["year"].type == pa.int64() and out["year"].to_pylist() == [2**60 + 1, None, 7]
    assert out[schema.STATUS].to_pylist() == ["ok", "timeout", "ok"]
    emb = np.stack(out[schema.EMBEDDING].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(emb, stage(b)[schema.EMBEDDING], atol=1e-6)
    assert out[schema.VISION_TOKENS_SHAPE].to_pylist()[1] == [0, 0]
    assert (
        len(out[schema.VISION_TOKENS][0].as_py()) > 0 == len(out[schema.VISION_TOKENS][1].as_py())
    )
    failed = stage(BlockAccessor.batch_to_block(batch(2, failed=(), size=64)))
    assert failed[schema.STATUS].to_pylist() == ["embed_error"] * 2
    assert all(
        m.startswith(("RuntimeError", "ValueError")) for m in failed[schema.MESSAGE].to_pylist()
    )


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
