"""The cheaper exact decode: the same frames as decord (or a decode of every frame), the numpy
resize against torch's, approximate keyframe sampling, and a decoder child without torch.

Videos are written here with PyAV the way catalogs are encoded (preset medium: B-frames and
a B-pyramid; x265's open GOPs, whose leading pictures reference the previous GOP), with a
keyframe every 10 s (250 frames) or every second.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import av
import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from media import decode_every_frame, write_coded_video

from models.internvideo2.preprocess import (
    antialias_bicubic_weights,
    middle_frame_segments,
    resize_frames,
    resize_frames_np,
)
from pipeline import runs, schema
from pipeline.decode import DecodeConfig, DecodeStage, IsolatedDecoder
from pipeline.decode.child import decode_path, open_container, plan_clips, rgb_frame
from pipeline.decode.reader import StreamIndex, index_stream, read_frames, snap_to_keyframes

HEVC = "libx265" in av.codecs_available
FRAMES = 100  # 4 s at 25 fps
#: (name, codec, keyframe interval in frames)
ENCODES = [
    ("x264-gop250", "libx264", 250),
    ("x264-gop25", "libx264", 25),
    pytest.param(
        "x265-gop25", "libx265", 25, marks=pytest.mark.skipif(not HEVC, reason="no libx265")
    ),
]
#: Settings that sample many frames from every GOP: 8 frames from each 1-s window.
DENSE = {"clip_seconds": 1.0, "num_frames": 8}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("coded")
    out = {}
    for name, codec, gop in (("x264-gop250", "libx264", 250), ("x264-gop25", "libx264", 25)):
        out[name] = write_coded_video(root / f"{name}.mp4", FRAMES, codec, gop)
    if HEVC:
        out["x265-gop25"] = write_coded_video(root / "x265-gop25.mp4", FRAMES, "libx265", 25)
    for angle in (90, 180, -90):
        # 160x120: decord cannot copy some rotated sizes out (160x96: a size-mismatch error).
        rotated = write_coded_video(root / f"rot{angle}.mp4", 30, height=120, rotation=angle)
        out[f"rot{angle}"] = rotated
    out["bt709"] = write_coded_video(root / "bt709.mp4", 30, colorspace=1)
    return root, out


def read(path, wanted, skip_nonref=True):
    """{frame index: RGB} of `wanted` through the reader, and how many frames it decoded."""
    got = {}
    with open_container(str(path)) as container:
        stream = container.streams.video[0]
        index = index_stream(container, stream)
        emit = lambda i, frame: got.__setitem__(i, frame.to_ndarray(format="rgb24"))  # noqa: E731
        decoded = read_frames(container, stream, index, wanted, emit, skip_nonref)
    return got, decoded, index


@pytest.mark.parametrize(("name", "codec", "gop"), ENCODES)
def test_the_encodes_have_what_makes_decoding_hard(videos, name, codec, gop):
    """B-frames, frames nothing references, one keyframe per GOP; x265: open GOPs whose
    keyframes are decoded before frames shown ahead of them."""
    path = videos[1][name]
    with av.open(str(path)) as container:
        types = {str(f.pict_type) for f in container.decode(video=0)}
    with av.open(str(path)) as container:
        container.streams.video[0].codec_context.skip_frame = "NONREF"
        references = sum(1 for _ in container.decode(video=0))
    assert {"1", "2", "3"} <= types  # I, P, B (PictureType values)
    assert references < FRAMES * 0.7
    with open_container(str(path)) as container:
        index = index_stream(container, container.streams.video[0])
    keys = index.keyframe_indices()
    assert keys.tolist() == list(range(0, FRAMES, gop))
    positions = np.flatnonzero(index.keyframe)
    if codec == "libx265":
        assert (positions[1:] < keys[1:]).all()  # leading pictures follow their keyframe
    else:
        assert positions.tolist() == keys.tolist()


@pytest.mark.parametrize(("name", "codec", "gop"), ENCODES)
def test_reader_gives_the_pixels_of_a_decode_of_every_frame(videos, name, codec, gop):
    path = videos[1][name]
    every = decode_every_frame(path)
    assert len(every) == FRAMES
    rng = np.random.default_rng(0)
    wanted_sets = [list(range(FRAMES)), [FRAMES - 1], [0, 1], [21, 22, 23, 24, 25, 26]]
    wanted_sets += [sorted(rng.choice(FRAMES, 4, replace=False).tolist()) for _ in range(12)]
    for wanted in wanted_sets:
        got, decoded, _ = read(path, wanted)
        assert sorted(got) == sorted(set(wanted))
        for i in wanted:
            np.testing.assert_array_equal(got[i], every[i], err_msg=f"{name} frame {i}")
    # Sparse frames cost less than decoding up to the last of them: skipped references-free
    # packets and, with short GOPs, whole GOPs.
    got, decoded, _ = read(path, [30, 93])
    assert decoded < 94 * 0.7, decoded
    _, all_of_them, _ = read(path, [30, 93], skip_nonref=False)
    assert decoded < all_of_them


def test_leading_pictures_start_from_the_previous_keyframe(videos):
    """x265's open GOP: the frames shown just before a keyframe but decoded after it read the
    previous GOP; asked for alone they must not come out of a decode that starts at their own
    keyframe (FFmpeg would drop them, or conceal the missing references)."""
    if not HEVC:
        pytest.skip("no libx265")
    path = videos[1]["x265-gop25"]
    every = decode_every_frame(path)
    with open_container(str(path)) as container:
        index = index_stream(container, container.streams.video[0])
    rank = np.empty_like(index.order)
    rank[index.order] = np.arange(FRAMES)
    key_positions = np.flatnonzero(index.keyframe)[1:]
    leading = [
        int(rank[p])
        for k in key_positions
        for p in range(k + 1, FRAMES)
        if rank[p] < rank[k] and not index.keyframe[p]
    ]
    assert leading  # the encode has them
    for i in leading:
        assert index.start_of(int(index.order[i])) < int(index.order[i]) - 1
        got, _, _ = read(path, [i, i + 1])  # with the keyframe's first trailing frame
        np.testing.assert_array_equal(got[i], every[i])


@pytest.mark.parametrize("settings", [{}, {"clip_seconds": 2.0}, DENSE])
@pytest.mark.parametrize("name", ["x264-gop250", "x264-gop25", "x265-gop25"])
def test_pyav_decoder_returns_decords_frames(videos, name, settings):
    """The default decoder against the old one, before the resize (the RGB frames decord's
    `get_batch` gives for the planned indices) and after it (the child's reply)."""
    if name not in videos[1]:
        pytest.skip("no libx265")
    decord = pytest.importorskip("decord")
    path = str(videos[1][name])
    params = DecodeConfig(**settings).worker_params()
    new, new_frames = decode_path(path, {**params, "decoder": "pyav"})
    assert new["decoder"] == "pyav" and new["status"] == "ok"
    reader = decord.VideoReader(path, num_threads=1)
    plans = plan_clips(len(reader), reader.get_avg_fps(), params)
    assert [c["frame_indices"] for c in new["clips"]] == [p.indices.tolist() for p in plans]
    every = decode_every_frame(path)
    wanted = sorted({i for p in plans for i in p.indices.tolist()})
    got, _, _ = read(path, wanted)
    for i in wanted:
        np.testing.assert_array_equal(got[i], every[i])
    for plan, frames in zip(plans, new_frames, strict=True):
        old = reader.get_batch(plan.indices.tolist()).asnumpy()
        expected = np.stack([every[i] for i in plan.indices.tolist()])
        np.testing.assert_array_equal(frames, resize_frames_np(expected))
        if name != "x265-gop25" or settings != DENSE:
            # decord seeks by mixing decode-order keyframe positions with presentation
            # indices; with open GOPs some frames come out shifted (the next test).
            np.testing.assert_array_equal(np.stack([got[i] for i in plan.indices]), old)
            # The old child's reply: decord's frames through torch's resize, one at a time.
            before = np.concatenate([resize_frames(f[None]) for f in old])
            diff = np.abs(frames.astype(np.int16) - before)
            assert diff.max() <= 1 and (diff > 0).mean() <= MAX_DIFFERING, (diff > 0).mean()


def test_open_gop_frames_are_the_decoded_ones_where_decord_shifts_them(videos):
    """Defect of the old path: decord (the old default) returns other frames than the indices
    it is asked for in most clips of an open-GOP HEVC file sampled densely (it locates
    keyframes by decode position but counts frames in presentation order, and these differ
    by the leading pictures); the default decoder returns what a decode of every frame has
    at those indices."""
    if not HEVC:
        pytest.skip("no libx265")
    decord = pytest.importorskip("decord")
    path = str(videos[1]["x265-gop25"])
    params = DecodeConfig(**DENSE).worker_params()
    header, frames = decode_path(path, params)
    assert header["decoder"] == "pyav"
    every = decode_every_frame(path)
    reader = decord.VideoReader(path, num_threads=1)
    shifted = 0
    for clip, resized in zip(header["clips"], frames, strict=True):
        indices = clip["frame_indices"]
        np.testing.assert_array_equal(
            resized, resize_frames_np(np.stack([every[i] for i in indices]))
        )
        old = reader.get_batch(indices).asnumpy()
        shifted += sum(not np.array_equal(o, every[i]) for o, i in zip(old, indices, strict=True))
    assert shifted > 0  # what decord does (measured: 25 of 32 frames)


@pytest.mark.parametrize("name", ["rot90", "rot180", "rot-90", "bt709"])
def test_rotation_and_colour_matrix_as_decord_applies_them(videos, name):
    """Phone videos carry a display rotation, HD ones a BT.709 matrix: decord turns the frames
    upright and converts with the frame's matrix; so does the default decoder (the old PyAV
    fallback returned rotated videos lying on their side)."""
    pytest.importorskip("decord")
    path = str(videos[1][name])
    params = DecodeConfig().worker_params()
    new, new_frames = decode_path(path, {**params, "decoder": "pyav"})
    old, old_frames = decode_path(path, {**params, "decoder": "decord"})
    assert (new["decoder"], old["decoder"]) == ("pyav", "decord")
    assert new["clips"] == old["clips"]
    np.testing.assert_array_equal(new_frames, old_frames)
    with av.open(path) as container:
        frame = next(container.decode(video=0))
    upright = rgb_frame(frame)
    if name in ("rot90", "rot-90"):
        assert upright.shape == (frame.width, frame.height, 3)
    else:
        assert upright.shape == (frame.height, frame.width, 3)


def remux(source, target):
    """The packets of `source`'s video stream in another container (by `target`'s suffix)."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
    return target


def test_an_mp4_is_opened_without_decoding_a_frame(videos, tmp_path):
    """FFmpeg's stream-info probe decodes H.264 frames with a decoder of its own; for the
    MP4 family its decoder skips them all (the pixel format then stays unknown until ours
    decodes), other containers are opened as before. The frames are the same either way."""
    mp4 = videos[1]["x264-gop25"]
    mkv = remux(mp4, tmp_path / "x264-gop25.mkv")
    with av.open(str(mp4)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
    with open_container(str(mp4)) as container:
        assert container.streams.video[0].codec_context.pix_fmt is None
    with open_container(str(mkv)) as container:
        assert container.format.name == "matroska,webm"
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
    for path in (mp4, mkv):
        header, frames = decode_path(str(path), DecodeConfig(**DENSE).worker_params())
        assert header["decoder"] == "pyav" and len(header["clips"]) == 4, header
        every = decode_every_frame(path)
        for clip, resized in zip(header["clips"], frames, strict=True):
            expected = np.stack([every[i] for i in clip["frame_indices"]])
            np.testing.assert_array_equal(resized, resize_frames_np(expected))


# --- the resize ------------------------------------------------------------------------


def torch_weights(in_size: int, out_size: int) -> np.ndarray:
    """torch's float32 weights along one axis, read off by resizing the identity."""
    eye = torch.eye(in_size).reshape(in_size, 1, 1, in_size)
    out = F.interpolate(eye, size=(1, out_size), mode="bicubic", antialias=True)
    return out[:, 0, 0, :].T.numpy()


def test_resize_weights_are_torchs_bit_for_bit():
    sizes = [*range(8, 4100, 61), 224, 240, 360, 480, 720, 1080, 1280, 1920, 2160, 3840]
    for out_size in (224, 160):
        for n in sizes:
            np.testing.assert_array_equal(
                antialias_bicubic_weights(n, out_size), torch_weights(n, out_size), f"{n}"
            )


#: Frames whose resized pixels may differ from torch's by one level: float32 sums in
#: another order cross a .5 boundary (measured 0.4e-5 to 1.6e-5 on noise and video).
MAX_DIFFERING = 5e-5


@pytest.mark.parametrize(
    ("height", "width"), [(1080, 1920), (720, 1280), (360, 640), (96, 160), (224, 300), (9, 7)]
)
def test_numpy_resize_matches_torch_within_one_level(height, width):
    frames = np.random.default_rng(height).integers(0, 256, (2, height, width, 3), np.uint8)
    ours, reference = resize_frames_np(frames), resize_frames(frames)
    diff = np.abs(ours.astype(np.int16) - reference)
    assert diff.max() <= 1
    assert (diff > 0).mean() <= MAX_DIFFERING, (diff > 0).mean()


def test_numpy_resize_on_video_frames_and_the_embeddings(videos):
    """Decoded frames (smooth areas, edges, grain): the differing pixels and what they do to
    embeddings of the tiny random model (the 1B model's are not measurable here)."""
    from pipeline.embed import encode_frames
    from pipeline.models import ModelSpec

    frames = np.stack(decode_every_frame(videos[1]["x264-gop25"])[:96:6])
    big = np.stack([np.kron(f, np.ones((7, 7, 1), np.uint8)) for f in frames[:4]])  # 672x1120
    for source in (frames, big):
        ours, reference = resize_frames_np(source), resize_frames(source)
        diff = np.abs(ours.astype(np.int16) - reference)
        assert diff.max() <= 1 and (diff > 0).mean() <= MAX_DIFFERING
    model = ModelSpec(model="tiny-random").build("cpu", torch.float32)
    clips = lambda x: x.reshape(-1, 4, 224, 224, 3)  # noqa: E731
    a = encode_frames(model, clips(resize_frames_np(frames)))[0]
    b = encode_frames(model, clips(resize_frames(frames)))[0]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert (1 - cosine).max() < 1e-6, (1 - cosine).max()


def test_resize_keeps_frames_already_at_size():
    frames = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), np.uint8)
    assert resize_frames_np(frames) is frames
    with pytest.raises(ValueError):
        resize_frames_np(frames[0])


# --- approximate sampling --------------------------------------------------------------


def test_keyframe_sampling_moves_frames_to_keyframes_inside_their_segments(videos):
    path = str(videos[1]["x264-gop25"])
    exact, _ = decode_path(path, DecodeConfig(clip_seconds=2.0).worker_params())
    params = DecodeConfig(clip_seconds=2.0, sampling="keyframe").worker_params()
    header, frames = decode_path(path, params)
    assert header["decoder"] == "pyav" and len(header["clips"]) == len(exact["clips"]) == 2
    every = decode_every_frame(path)
    with open_container(path) as container:
        keys = set(index_stream(container, container.streams.video[0]).keyframe_indices())
    for clip, old, resized in zip(header["clips"], exact["clips"], frames, strict=True):
        segments = middle_frame_segments(50, 4) + 50 * clip["index"]
        for i, j, (a, b) in zip(clip["frame_indices"], old["frame_indices"], segments, strict=True):
            assert a <= i < b and a <= j < b
            has_key = any(a <= k < b for k in keys)
            assert (i in keys) if has_key else i == j
        np.testing.assert_array_equal(
            resized, resize_frames_np(np.stack([every[i] for i in clip["frame_indices"]]))
        )
    assert [c["frame_indices"] for c in header["clips"]] == [[0, 18, 25, 43], [50, 68, 75, 93]]


def test_keyframe_sampling_snaps_to_the_nearest_keyframe_of_the_segment():
    keyframe = np.isin(np.arange(48), [0, 10, 14, 40])
    order = np.arange(48)
    index = StreamIndex(order * 512, order * 512, keyframe, order, by_pts=True)
    segments = np.array([[0, 8], [8, 16], [16, 24], [24, 48]])
    got = snap_to_keyframes(index, np.array([3, 12, 20, 36]), segments)
    assert got.tolist() == [0, 10, 20, 40]  # a tie goes to the earlier; no keyframe: stays


def test_keyframe_sampling_decodes_less_and_changes_the_signature(videos):
    path = videos[1]["x264-gop25"]
    root = str(videos[0])
    exact = DecodeConfig(allowed_roots=(root,))
    approximate = dataclasses.replace(exact, sampling="keyframe")
    assert exact.signature_inputs() == DecodeConfig(decoder="decord").signature_inputs()
    assert dict(approximate.signature_inputs())["sampling"] == "keyframe"
    assert "sampling" not in dict(exact.signature_inputs())
    assert approximate.worker_params()["sampling"] == "keyframe"
    assert "sampling" in runs.RUN_DECODE_FIELDS
    with pytest.raises(ValueError, match="sampling"):
        DecodeConfig(sampling="nearest")
    with IsolatedDecoder(approximate) as decoder:
        (clip,) = decoder.decode(str(path)).clips
    assert clip.frame_indices.tolist() == [0, 25, 50, 75]  # every segment holds a keyframe
    _, decoded, _ = read(path, clip.frame_indices.tolist())
    assert decoded == 4


def test_keyframe_rows_record_the_frames_they_were_made_from(videos):
    """The decode stage's rows (what the table stores) carry the frames keyframe sampling
    used, so each row's shift from the exact frames is known: the shift stays inside the
    frame's segment, and the row's pixels are those frames'."""
    root, files = videos
    manifest = pa.table(
        {
            schema.VIDEO_ID: ["short-gops", "one-gop"],
            schema.URI: [str(files["x264-gop25"]), str(files["x264-gop250"])],
        }
    )
    rows = {}
    for sampling in ("exact", "keyframe"):
        config = DecodeConfig(allowed_roots=(str(root),), clip_seconds=2.0, sampling=sampling)
        stage = DecodeStage(config)
        try:
            rows[sampling] = stage.decode_batch(manifest)
        finally:
            stage.close()
    exact, approx = (rows[k][schema.FRAME_INDICES].to_pylist() for k in ("exact", "keyframe"))
    assert rows["keyframe"][schema.STATUS].to_pylist() == ["ok"] * 4
    assert exact == [[5, 18, 30, 43], [55, 68, 80, 93]] * 2
    # One keyframe per second: every frame moves to the keyframe of its segment; one
    # keyframe in 10 s: only the first segment holds it.
    assert approx == [[0, 18, 25, 43], [50, 68, 75, 93], [0, 18, 30, 43], [55, 68, 80, 93]]
    shift = np.abs(np.array(approx) - np.array(exact))
    assert shift.max() == 5 and shift[2:, 1:].max() == 0
    pixels = schema.frames_ndarray(rows["keyframe"][schema.FRAMES])
    names = ["x264-gop25"] * 2 + ["x264-gop250"] * 2
    for row, (name, indices) in enumerate(zip(names, approx, strict=True)):
        every = decode_every_frame(files[name])
        expected = resize_frames_np(np.stack([every[i] for i in indices]))
        np.testing.assert_array_equal(pixels[row], expected)


def test_a_failing_pyav_decode_falls_back_to_decords_exact_frames(videos):
    path = str(videos[1]["x264-gop25"])
    params = {**DecodeConfig(sampling="keyframe").worker_params()}
    header, _ = decode_path(path, params, fault="pyav_error")
    exact, _ = decode_path(path, DecodeConfig().worker_params())
    assert header["decoder"] == "decord"
    assert header["clips"] == exact["clips"]


# --- the child process -----------------------------------------------------------------


def mapped_files(pid: int) -> set[str]:
    """The files a live process has mapped (its shared libraries among them)."""
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split(maxsplit=5)[5].strip() for line in maps if len(line.split()) == 6}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_running_decoder_child_has_not_loaded_torch(videos):
    """What a child holds after real decodes, read from /proc: no torch (its import cost
    1.2 CPU s and ~200 MB per process); decord only once a job asked for it."""
    root, files = videos
    libraries = {}
    for decoder in ("pyav", "decord"):
        config = DecodeConfig(allowed_roots=(str(root),), decoder=decoder)
        with IsolatedDecoder(config) as isolated:
            for name in ("x264-gop25", "rot90"):
                result = isolated.decode(str(files[name]))
                assert result.decoder == decoder, result
            libraries[decoder] = mapped_files(isolated.child_pid)
    for decoder, files_mapped in libraries.items():
        assert any("libavcodec" in f for f in files_mapped), decoder  # the check sees libraries
        assert not [f for f in files_mapped if "torch" in f], decoder
    assert not [f for f in libraries["pyav"] if "decord" in f]
    assert [f for f in libraries["decord"] if "decord" in f]


def test_the_decoder_child_imports_neither_torch_nor_decord():
    code = (
        "import sys, pipeline.decode.child; "
        "print(sorted(m for m in ('torch', 'decord') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
