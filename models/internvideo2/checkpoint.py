"""Loading InternVideo2 stage-2 checkpoints: resolve, read safely, convert, account for keys.

`load_internvideo2` is the one entry point. It never unpickles arbitrary objects
(`weights_only=True`, with only `set` and `torch.Size` allowed, which the DeepSpeed-era
files contain), builds the model on the `meta` device and assigns the checkpoint's tensors
in the requested dtype, so a 1B model costs one copy of its weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import InternVideo2Config
from .model import InternVideo2

logger = logging.getLogger(__name__)

HUB_REPO = "OpenGVLab/InternVideo2-Stage2_1B-224p-f4"
HUB_FILENAME = "InternVideo2-stage2_1b-224p-f4.pt"

#: Checkpoint entries that play no part in retrieval and are dropped on load, by design:
#: the contrastive temperature (unused at evaluation), BERT's position-id buffer (positions
#: are computed), and the stage-1 distillation heads and the masked-LM head.
IGNORED_KEYS = frozenset(
    {
        "temp",
        "text_encoder.bert.embeddings.position_ids",
        "vision_encoder.clip_pos_embed",
        "vision_encoder.clip_img_pos_embed",
    }
)
IGNORED_PREFIXES = (
    "vision_encoder.clip_decoder.",
    "vision_encoder.final_clip_decoder.",
    "text_encoder.cls.",
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w.-]+)?$")
#: A reference whose name ends like a weights file is a (mistyped) local path, never a repo.
WEIGHTS_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
POS_EMBED_KEY = "vision_encoder.pos_embed"


class CheckpointError(ValueError):
    """The checkpoint cannot be found, read, or does not match the model."""


def is_ignored(key: str) -> bool:
    return key in IGNORED_KEYS or key.startswith(IGNORED_PREFIXES)


@dataclass
class LoadReport:
    """What happened to every checkpoint key."""

    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)
    source_dtypes: dict[str, int] = field(default_factory=dict)


# ---- locating the file ------------------------------------------------------------------


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """vidcat's cache directory: `cache_dir`, else `$VIDCAT_CACHE`, else `~/.cache/vidcat`."""
    return Path(cache_dir or os.environ.get("VIDCAT_CACHE", Path.home() / ".cache" / "vidcat"))


def _s3_client(s3: Any) -> Any:
    """A boto3 client from `s3` (a `pipeline.storage.S3Config`: endpoint, region, anonymous
    access and retries are set there), or from the default config."""
    if s3 is None:
        from pipeline.storage import S3Config

        s3 = S3Config()
    return s3.client()


def resolve_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    s3: Any = None,
) -> Path:
    """Return a local path for `checkpoint`.

    Args:
        checkpoint: a local path; an `s3://bucket/key` URI (downloaded once into
            `cache_dir`, credentials from the standard AWS chain); or a Hugging Face repo
            id, optionally pinned as `repo@revision` (a commit sha in production), whose
            file is `InternVideo2-stage2_1b-224p-f4.pt`.
        cache_dir: where remote checkpoints are kept (default :func:`cache_root`).
        s3: a `pipeline.storage.S3Config` for `s3://` checkpoints (endpoint, region,
            anonymous access, retries); None: the default AWS settings.
    """
    text = os.fspath(checkpoint)
    cache = cache_root(cache_dir)
    if text.startswith("s3://"):
        return _download_s3(text, cache, s3)
    local = Path(text.removeprefix("file://")).expanduser()
    if local.exists():
        return local
    if _is_hub_id(text):
        return _download_hub(text, cache)
    raise CheckpointError(f"checkpoint not found: {text!r} is no file, s3:// URI or hub repo id")


def _is_hub_id(text: str) -> bool:
    """`org/repo` or `org/repo@revision`; anything with more than one `/` before the
    revision, or named like a weights file (`weights/missing.pt`), is a local path."""
    repo_id = text.partition("@")[0]
    return (
        bool(_HUB_ID.match(text))
        and not text.startswith((".", "/", "~"))
        and repo_id.count("/") == 1
        and not repo_id.lower().endswith(WEIGHTS_SUFFIXES)
    )


def _download_s3(uri: str, cache: Path, s3: Any) -> Path:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key or "@" in bucket:
        raise CheckpointError("malformed s3 checkpoint URI (expected s3://bucket/key)")
    client = _s3_client(s3)
    try:
        etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    except Exception as exc:  # botocore raises many types; the message has no secrets
        raise CheckpointError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
    target = cache / "s3" / bucket / f"{key.replace('/', '__')}.{etag}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    os.close(fd)
    try:
        logger.info("downloading s3://%s/%s", bucket, key)
        client.download_file(bucket, key, tmp)
        os.replace(tmp, target)  # atomic: a crash never leaves a truncated cache entry
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _download_hub(repo_spec: str, cache: Path) -> Path:
    repo_id, _, revision = repo_spec.partition("@")
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(
            repo_id, HUB_FILENAME, revision=revision or None, cache_dir=cache / "hub"
        )
    except Exception as exc:
        raise CheckpointError(
            f"cannot fetch {HUB_FILENAME} from the hub repo {repo_id!r}"
            f"{'@' + revision if revision else ''}: {exc}. Offline? Download the file "
            "elsewhere and pass its local path or an s3:// URI."
        ) from exc
    return Path(path)


def checkpoint_identity(checkpoint: str | os.PathLike, *, s3: Any = None) -> str:
    """A content identity for `checkpoint` that never downloads the weights.

    Local files: their sha256 (cached in the user's cache directory). `s3://`: the
    object's ETag. Hub ids:
    the commit sha (`repo@<40-hex sha>` is taken as given; other revisions are resolved
    through the hub API, which needs network).
    """
    text = os.fspath(checkpoint)
    if text.startswith("s3://"):
        bucket, _, key = text.removeprefix("s3://").partition("/")
        try:
            head = _s3_client(s3).head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise CheckpointError(f"cannot read s3://{bucket}/{key}: {exc}") from exc
        return f"s3etag:{head['ETag'].strip(chr(34))}"
    local = Path(text.removeprefix("file://")).expanduser()
    if local.exists():
        return file_digest(local)
    if not _is_hub_id(text):
        raise CheckpointError(f"checkpoint not found: {text!r}")
    repo_id, _, revision = text.partition("@")
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return f"hub:{repo_id}@{revision}"
    try:
        from huggingface_hub import HfApi

        sha = HfApi().model_info(repo_id, revision=revision or None).sha
    except Exception as exc:
        raise CheckpointError(
            f"cannot resolve {text!r} to a commit ({type(exc).__name__}); pin it as "
            f"{repo_id}@<commit sha> or use a local/s3 copy"
        ) from exc
    return f"hub:{repo_id}@{sha}"


# ---- reading ----------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file without executing arbitrary pickled code.

    Accepts `{"model": sd}`, `{"module": sd}` (DeepSpeed) and bare state dicts.
    """
    try:
        with torch.serialization.safe_globals([set, torch.Size]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {os.fspath(path)!r}: {exc}") from exc
    for wrapper in ("model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{os.fspath(path)!r} holds no state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"non-tensor entries in the state dict: {bad[:10]}")
    return obj


def file_digest(
    path: str | os.PathLike, chunk: int = 1 << 24, *, cache_dir: str | os.PathLike | None = None
) -> str:
    """`sha256:<hex>` of a file (a 2.8 GB hash takes ~10 s).

    Cached in the user's cache directory (:func:`cache_root`/`digests`), keyed by the file's
    absolute path, size and mtime: reading weights never writes beside them (a model
    directory may be read-only, or someone else's). A cache that cannot be written is
    skipped.
    """
    p = Path(path).resolve()
    st = p.stat()
    stamp = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    entry = (
        cache_root(cache_dir) / "digests" / (hashlib.sha256(str(p).encode()).hexdigest() + ".json")
    )
    try:
        cached = json.loads(entry.read_text())
        if {k: cached.get(k) for k in stamp} == stamp:
            return cached["digest"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = f"sha256:{h.hexdigest()}"
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**stamp, "digest": digest}))
        os.replace(tmp, entry)
    except OSError:
        logger.debug("cannot cache the digest of %s in %s", p, entry.parent)
    return digest


# ---- converting -------------------------------------------------------------------------


def interpolate_pos_embed(
    pos_embed: torch.Tensor, num_frames: int, patches_per_frame: int, name: str = "pos_embed"
) -> torch.Tensor:
    """Resize a `[1, 1 + L*T0, C]` video position embedding to `num_frames` along time.

    The cls row is kept; the patch rows, viewed `[T0, L, C]`, are linearly interpolated
    over time (align_corners=False) to `[num_frames, L, C]`.

    Raises:
        CheckpointError: `pos_embed` (called `name` in the message) is not
            `[1, 1 + L*T0, C]` with `T0 >= 1`.
    """
    t0 = pos_embed_frames(pos_embed, patches_per_frame, name)
    if t0 == num_frames:
        return pos_embed
    cls_row, grid = pos_embed[:, :1], pos_embed[:, 1:]
    c = grid.shape[-1]
    x = grid.float().reshape(t0, patches_per_frame, c).permute(1, 2, 0)  # [L, C, T0]
    x = F.interpolate(x, size=num_frames, mode="linear", align_corners=False)
    x = x.permute(2, 0, 1).reshape(1, num_frames * patches_per_frame, c).to(pos_embed.dtype)
    return torch.cat([cls_row, x], dim=1)


def pos_embed_frames(
    pos_embed: torch.Tensor, patches_per_frame: int, name: str = "pos_embed"
) -> int:
    """The frame count T0 of a `[1, 1 + L*T0, C]` position embedding (L patches per frame).

    Raises:
        CheckpointError: naming `name`, when the shape is not of that form with `T0 >= 1`.
    """
    shape = tuple(pos_embed.shape)
    if len(shape) != 3 or shape[0] != 1:
        raise CheckpointError(f"{name} has shape {list(shape)}, not [1, 1 + L*T, C]")
    rows = shape[1] - 1
    if rows < 1 or rows % patches_per_frame:
        raise CheckpointError(
            f"{name} has {rows} patch rows, not a positive multiple of the model's "
            f"{patches_per_frame} patches per frame (another image or patch size?)"
        )
    return rows // patches_per_frame


def convert_state_dict(
    state_dict: dict[str, torch.Tensor],
    model: InternVideo2,
    dtype: torch.dtype,
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map checkpoint entries onto `model`'s parameters, strictly.

    Every key is loaded, or dropped because :func:`is_ignored` names it; anything else
    unexpected, anything missing and any shape difference raises :class:`CheckpointError`
    naming the keys.
    """
    report = LoadReport()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    cfg = model.config.vision
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    why: dict[str, str] = {}  # why a tensor kept a shape the model cannot take
    for key, tensor in state_dict.items():
        dt = str(tensor.dtype).removeprefix("torch.")
        report.source_dtypes[dt] = report.source_dtypes.get(dt, 0) + 1
        if is_ignored(key):
            report.ignored.append(key)
            continue
        if key not in expected:
            unexpected.append(key)
            continue
        have, want = tuple(tensor.shape), expected[key]
        if key == POS_EMBED_KEY and have != want and have[-1:] == want[-1:]:
            # (Another width is another model size: a plain shape mismatch, below.)
            try:
                t0 = pos_embed_frames(tensor, cfg.patches_per_frame, "the position embedding")
            except CheckpointError as exc:
                # Malformed, or another image/patch size: reported with the shape
                # mismatches below, never handed to F.interpolate.
                why[key] = str(exc)
                t0 = cfg.num_frames
            if t0 != cfg.num_frames:
                # The model was built for another frame count: resample along time. Loud,
                # because an f8 checkpoint in an f4 model is as often a mistake as a choice.
                logger.warning(
                    "%s: the checkpoint has %d frames, the model %d frames; interpolating "
                    "along time (a checkpoint of another image size can look the same: its "
                    "rows are read as frames of %d patches)",
                    key,
                    t0,
                    cfg.num_frames,
                    cfg.patches_per_frame,
                )
                tensor = interpolate_pos_embed(tensor, cfg.num_frames, cfg.patches_per_frame, key)
                report.interpolated.append(key)
        out[key] = tensor.to(dtype) if tensor.is_floating_point() else tensor
        report.loaded.append(key)
    missing = sorted(set(expected) - set(out))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(t.shape)} vs model {expected[k]}"
        + (f"; {why[k]}" if k in why else "")
        for k, t in out.items()
        if tuple(t.shape) != expected[k]
    )
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing keys: {_names(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_names(mismatched)}")
    if problems:
        raise CheckpointError("checkpoint does not match the model config; " + "; ".join(problems))
    return out, report


def _names(keys: list[str], limit: int = 12) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ---- building ---------------------------------------------------------------------------


def _freeze(model: InternVideo2) -> InternVideo2:
    model.eval()
    model.requires_grad_(False)
    return model


def load_internvideo2(
    checkpoint: str | os.PathLike,
    config: InternVideo2Config | None = None,
    num_frames: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    s3: Any = None,
    cache_dir: str | os.PathLike | None = None,
) -> InternVideo2:
    """Load a stage-2 checkpoint into a frozen, eval-mode :class:`InternVideo2`.

    Args:
        checkpoint: local path, `s3://` URI, or hub repo id (`repo@revision`).
        config: model dimensions; default :meth:`InternVideo2Config.stage2_1b`.
        num_frames: frames per clip; when it differs from the checkpoint's, `pos_embed`
            is interpolated along time (sensible range 4-16).
        device, dtype: where and in which floating dtype the weights live.

    Returns:
        The model, with `checkpoint_digest` and `load_report` attributes.
    """
    config = config or InternVideo2Config.stage2_1b()
    if num_frames is not None:
        config = config.with_num_frames(num_frames)
    t = config.vision.num_frames
    if t != 1 and not 4 <= t <= 16:
        logger.warning("num_frames=%d is outside the range 4-16 the model was evaluated on", t)
    path = resolve_checkpoint(checkpoint, cache_dir=cache_dir, s3=s3)
    state_dict = read_state_dict(path)
    with torch.device("meta"):
        model = InternVideo2(config)
    tensors, report = convert_state_dict(state_dict, model, dtype)
    tensors = {k: v.to(device) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    logger.info(
        "loaded %s: %d tensors, %d ignored, interpolated %s, source dtypes %s",
        path.name,
        len(report.loaded),
        len(report.ignored),
        report.interpolated or "nothing",
        report.source_dtypes,
    )
    model.checkpoint_digest = file_digest(path, cache_dir=cache_dir)
    model.load_report = report
    return _freeze(model)


def random_internvideo2(
    config: InternVideo2Config,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> InternVideo2:
    """A frozen model with deterministic random weights (tests, demo, benchmarks).

    Weights are drawn so activations stay well scaled (norm weights near 1, LayerScale
    0.1, linear weights N(0, 0.02)); the digest names the config and seed.
    """
    # Drawn on the CPU so a seed gives the same weights on every device.
    gen = torch.Generator().manual_seed(seed)
    model = InternVideo2(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.1)
            elif "norm" in name.lower() and name.endswith("weight"):
                p.normal_(1.0, 0.02, generator=gen)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    model.checkpoint_digest = config.random_digest(seed)
    return _freeze(model.to(device=device, dtype=dtype))
