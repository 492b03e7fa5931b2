"""Checkpoint loading: layouts, safety, strict key accounting, interpolation, remote sources."""

import collections
import hashlib
import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from fixtures import KEYS_1B, TINY_CHECKPOINT, TINY_CONFIG

from models.internvideo2 import InternVideo2, InternVideo2Config, load_internvideo2
from models.internvideo2.checkpoint import (
    CheckpointError,
    checkpoint_identity,
    file_digest,
    interpolate_pos_embed,
    is_ignored,
    random_internvideo2,
    read_state_dict,
    resolve_checkpoint,
)


@pytest.fixture(scope="module")
def tiny_config():
    return InternVideo2Config.from_json(TINY_CONFIG)


@pytest.fixture(scope="module")
def tiny_sd():
    return read_state_dict(TINY_CHECKPOINT)


def official_keys():
    rows = KEYS_1B.read_text().splitlines()[1:]
    out = {}
    for row in rows:
        key, shape, _dtype = row.split("\t")
        out[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def test_stage2_1b_has_exactly_the_official_keys_and_shapes():
    official = official_keys()
    assert len(official) == 1023
    ignored = {k for k in official if is_ignored(k)}
    assert len(ignored) == 39
    with torch.device("meta"):
        model = InternVideo2(InternVideo2Config.stage2_1b())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {k: v for k, v in official.items() if k not in ignored}
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert {k: s for k, s in ours.items() if s != expected[k]} == {}


def _check_loads(path, config):
    model = load_internvideo2(path, config)
    ref = load_internvideo2(TINY_CHECKPOINT, config)
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    return model


@pytest.mark.parametrize("layout", ["model", "module", "bare"])
def test_wrapper_layouts(tmp_path, tiny_sd, tiny_config, layout):
    obj = tiny_sd if layout == "bare" else {layout: tiny_sd}
    torch.save(obj, tmp_path / "ckpt.pt")
    _check_loads(tmp_path / "ckpt.pt", tiny_config)


def test_deepspeed_extras_load_with_weights_only(tmp_path, tiny_sd, tiny_config):
    obj = {
        "module": tiny_sd,
        "frozen_param_fragments": {"a", "b"},
        "param_shapes": [collections.OrderedDict(x=torch.Size([3, 4]))],
    }
    torch.save(obj, tmp_path / "ds.pt")
    _check_loads(tmp_path / "ds.pt", tiny_config)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/vidcat-pwned"),))


def test_arbitrary_objects_are_never_unpickled(tmp_path):
    Path("/tmp/vidcat-pwned").unlink(missing_ok=True)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": {"x": _Evil()}}, f)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(tmp_path / "evil.pt")
    assert not Path("/tmp/vidcat-pwned").exists()


def test_bf16_checkpoint_loads_in_requested_dtype(tmp_path, tiny_sd, tiny_config):
    bf16 = {k: v.bfloat16() if v.is_floating_point() else v for k, v in tiny_sd.items()}
    torch.save({"model": bf16}, tmp_path / "bf16.pt")
    model = load_internvideo2(tmp_path / "bf16.pt", tiny_config, dtype=torch.float32)
    assert model.dtype == torch.float32
    assert model.load_report.source_dtypes.get("bfloat16", 0) > 0
    key = "vision_encoder.cls_token"
    assert torch.equal(model.state_dict()[key], bf16[key].float())
    model16 = load_internvideo2(tmp_path / "bf16.pt", tiny_config, dtype=torch.bfloat16)
    assert model16.dtype == torch.bfloat16


def test_ignored_keys_are_reported(tiny_config):
    model = load_internvideo2(TINY_CHECKPOINT, tiny_config)
    ignored = set(model.load_report.ignored)
    assert {"temp", "text_encoder.bert.embeddings.position_ids"} <= ignored
    assert all(is_ignored(k) for k in ignored)
    assert len(model.load_report.loaded) == len(model.state_dict())


def test_unexpected_key_is_named(tmp_path, tiny_sd, tiny_config):
    torch.save(
        {"model": {**tiny_sd, "vision_encoder.extra_head.weight": torch.zeros(2)}},
        tmp_path / "x.pt",
    )
    with pytest.raises(CheckpointError, match=r"unexpected keys: vision_encoder\.extra_head"):
        load_internvideo2(tmp_path / "x.pt", tiny_config)


def test_missing_key_is_named(tmp_path, tiny_sd, tiny_config):
    sd = {k: v for k, v in tiny_sd.items() if k != "itm_head.bias"}
    torch.save(sd, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: itm_head\.bias"):
        load_internvideo2(tmp_path / "x.pt", tiny_config)


def test_shape_mismatch_is_named(tmp_path, tiny_sd, tiny_config):
    sd = dict(tiny_sd)
    sd["text_proj.weight"] = torch.zeros(8, 32)
    torch.save(sd, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"text_proj\.weight: checkpoint \(8, 32\)"):
        load_internvideo2(tmp_path / "x.pt", tiny_config)


def test_wrong_config_is_an_error_not_a_silent_partial_load(tiny_config):
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_internvideo2(TINY_CHECKPOINT, InternVideo2Config.tiny_random(num_frames=2))


def test_non_checkpoint_file(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_state_dict(tmp_path / "junk.pt")


def test_interpolation_is_linear_in_time_and_keeps_cls():
    L, C = 3, 2
    grid = torch.stack([torch.full((L, C), float(t)) for t in range(2)])  # frame t holds t
    pos = torch.cat([torch.full((1, 1, C), 7.0), grid.reshape(1, 2 * L, C)], dim=1)
    out = interpolate_pos_embed(pos, 4, L)
    assert out.shape == (1, 1 + 4 * L, C)
    assert torch.equal(out[:, 0], pos[:, 0])
    per_frame = out[0, 1:].reshape(4, L, C)[:, 0, 0]
    # align_corners=False: sample points at (i + 0.5) * 2/4 - 0.5, clamped to [0, 1].
    assert torch.allclose(per_frame, torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert interpolate_pos_embed(pos, 2, L) is pos


def test_other_frame_count_is_interpolated_with_a_warning(tiny_config, caplog):
    caplog.set_level(logging.WARNING, logger="models.internvideo2.checkpoint")
    model = load_internvideo2(TINY_CHECKPOINT, tiny_config, num_frames=4)
    assert model.load_report.interpolated == ["vision_encoder.pos_embed"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "vision_encoder.pos_embed" in m and "2 frames" in m and "4 frames" in m for m in warned
    ), warned
    caplog.clear()
    load_internvideo2(TINY_CHECKPOINT, tiny_config)  # same frame count: no warning
    assert not [r for r in caplog.records if "interpolating" in r.getMessage()]


@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 64),  # a cls row only: no patch rows to resample
        (2, 13, 64),  # a batch dimension other than 1
        (1, 10, 64),  # 9 patch rows, not a multiple of the 4 patches per frame
    ],
)
def test_malformed_pos_embed_is_a_checkpoint_error_naming_the_key(
    tmp_path, tiny_sd, tiny_config, shape
):
    sd = {**tiny_sd, "vision_encoder.pos_embed": torch.zeros(shape)}
    torch.save(sd, tmp_path / "x.pt")
    with pytest.raises(
        CheckpointError, match=r"vision_encoder\.pos_embed: checkpoint .*; the position embedding"
    ):
        load_internvideo2(tmp_path / "x.pt", tiny_config, num_frames=4)


def test_interpolate_rejects_a_pos_embed_without_patch_rows():
    with pytest.raises(CheckpointError, match="patch rows"):
        interpolate_pos_embed(torch.zeros(1, 1, 8), 4, 3)
    with pytest.raises(CheckpointError, match=r"\[1, 1 \+ L\*T, C\]"):
        interpolate_pos_embed(torch.zeros(2, 7, 8), 4, 3)


def test_digest_is_cached_in_the_user_cache_and_tracks_content(tmp_path, monkeypatch):
    """The digest cache lives in the user's cache directory, keyed by path, size and mtime:
    reading weights writes nothing beside them, and a read-only model directory works."""
    from models.internvideo2 import checkpoint as ckpt

    reads = []
    real_open = open

    def counting_open(file, *args, **kwargs):  # `file_digest` reads the file with `open`
        if Path(file) == f:
            reads.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(ckpt, "open", counting_open, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("VIDCAT_CACHE", str(cache))
    models = tmp_path / "models"
    models.mkdir()
    f = models / "w.pt"
    f.write_bytes(b"abc")
    models.chmod(0o555)  # a read-only mount
    try:
        d1 = file_digest(f)
        assert d1 == "sha256:" + hashlib.sha256(b"abc").hexdigest() and len(reads) == 1
        assert os.listdir(models) == ["w.pt"]  # nothing written beside the weights
        (entry,) = (cache / "digests").iterdir()
        st = f.stat()
        assert json.loads(entry.read_text()) == {
            "path": str(f.resolve()),
            "size": 3,
            "mtime_ns": st.st_mtime_ns,
            "digest": d1,
        }
        assert file_digest(f) == d1 and len(reads) == 1  # from the cache: not read again
    finally:
        models.chmod(0o755)

    # Same size, new mtime (set explicitly: a fast rewrite can keep the old timestamp).
    f.write_bytes(b"xyz")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    d2 = file_digest(f)
    assert d2 == "sha256:" + hashlib.sha256(b"xyz").hexdigest() != d1 and len(reads) == 2
    assert json.loads(entry.read_text())["digest"] == d2
    # Another file of the same name elsewhere is another entry.
    other = tmp_path / "w.pt"
    other.write_bytes(b"abc")
    assert file_digest(other) == d1 and len(list((cache / "digests").iterdir())) == 2


def test_random_model_is_deterministic_and_labelled():
    cfg = InternVideo2Config.tiny_random()
    a, b = random_internvideo2(cfg, seed=3), random_internvideo2(cfg, seed=3)
    assert a.checkpoint_digest == b.checkpoint_digest and a.checkpoint_digest.startswith("random:")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert cfg.name == "tiny-random" and cfg.embed_dim == 512


def test_missing_local_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nope.pt")


def test_hub_download_offline_is_a_clear_error(tmp_path, no_network):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # set by conftest before the hub was imported
    with pytest.raises(CheckpointError, match="Offline"):
        resolve_checkpoint("OpenGVLab/InternVideo2-Stage2_1B-224p-f4@abc123", cache_dir=tmp_path)
    assert no_network == []


@pytest.mark.parametrize(
    "ref",
    [
        "weights/missing.pt",
        "weights/missing.pth",
        "weights/missing.bin",
        "weights/missing.safetensors",
        "weights/missing.CKPT",
        "org/model.pt@main",
        "weights/sub/missing",
        "a/b/c@main",
    ],
)
def test_mistyped_local_path_is_not_found_not_a_hub_repo(tmp_path, monkeypatch, no_network, ref):
    from models.internvideo2 import checkpoint as ckpt

    hub_calls = []
    monkeypatch.setattr(ckpt, "_download_hub", lambda *a: hub_calls.append(a))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        resolve_checkpoint(ref, cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        checkpoint_identity(ref)
    assert hub_calls == [] and no_network == []


def test_hub_ids_still_go_to_the_hub(tmp_path, monkeypatch, no_network):
    from models.internvideo2 import checkpoint as ckpt

    hub_calls = []
    monkeypatch.setattr(ckpt, "_download_hub", lambda spec, cache: hub_calls.append(spec))
    for ref in ("OpenGVLab/InternVideo2-Stage2_1B-224p-f4", "org/model.v2@main"):
        resolve_checkpoint(ref, cache_dir=tmp_path)
    assert hub_calls == ["OpenGVLab/InternVideo2-Stage2_1B-224p-f4", "org/model.v2@main"]
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert checkpoint_identity(f"org/model@{sha}") == f"hub:org/model@{sha}"
    assert no_network == []


def test_existing_relative_weights_file_is_used(tmp_path, monkeypatch):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.pt").write_bytes(b"abc")
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("weights/w.pt") == Path("weights/w.pt")
    assert checkpoint_identity("weights/w.pt").startswith("sha256:")
