"""Exact frames for less: decode only the packets the sampled frames depend on (PyAV).

Frame `i` of a video is the one with the i-th smallest presentation timestamp among the
video stream's packets, the count decord uses. One demux without decoding
(:func:`index_stream`, milliseconds) gives every packet's timestamps and keyframe flag; then
:func:`read_frames` decodes, for each wanted frame, from the last keyframe it can be decoded
from up to its own packet, and nothing after it:

* a gap between two wanted frames that holds a keyframe is not decoded (a seek instead);
* inside a run, packets that no other frame references (H.264 `nal_ref_idc = 0`, HEVC
  sub-layer non-reference pictures) are dropped by the decoder unless they are wanted
  (FFmpeg's `skip_frame = NONREF`, set per packet): nothing decoded afterwards reads them,
  so every decoded frame has the same pixels as in a decode of every frame;
* only the wanted frames leave the decoder's pixel format (the caller converts them).

With one keyframe per 10 s the wanted frames of a clip still cost every reference frame
before them; with 2-s GOPs a frame costs its own GOP's references up to it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import av
import numpy as np


class FrameReadError(RuntimeError):
    """The stream did not give a wanted frame (corrupt, or not the packets it announced)."""


@dataclass(frozen=True)
class StreamIndex:
    """The video stream's packets, in decode order.

    Attributes:
        pts, dts: int64 `[N]` timestamps in the stream's time base (dts may repeat pts).
        keyframe: bool `[N]`, the container's keyframe flags.
        order: int64 `[N]`, the decode position of frame `i` (packets sorted by pts).
        by_pts: False when some packet has no pts or two share one: frames are then counted
            in the decoder's output order, and every packet is decoded from the first.
    """

    pts: np.ndarray
    dts: np.ndarray
    keyframe: np.ndarray
    order: np.ndarray
    by_pts: bool

    @property
    def num_frames(self) -> int:
        return len(self.pts)

    def keyframe_indices(self) -> np.ndarray:
        """Sorted frame indices (presentation order) of the keyframes."""
        rank = np.empty_like(self.order)
        rank[self.order] = np.arange(len(self.order))
        return np.sort(rank[self.keyframe])

    def start_of(self, position: int) -> int:
        """Decode position to start from for the packet at `position`: the last keyframe at or
        before it in decode order that is not shown after it. Leading pictures of an open GOP
        (HEVC RASL: decoded after their keyframe, shown before it) reference the previous
        GOP, so they start from the keyframe before theirs. 0 when none qualifies."""
        if not self.by_pts:
            return 0
        keys = np.flatnonzero(self.keyframe[: position + 1])
        keys = keys[self.pts[keys] <= self.pts[position]]
        return int(keys[-1]) if len(keys) else 0


def index_stream(container: av.container.InputContainer, stream: av.VideoStream) -> StreamIndex:
    """Demux every packet of `stream` once, without decoding."""
    pts, dts, key = [], [], []
    for packet in container.demux(stream):
        if _is_flush(packet):
            continue
        pts.append(packet.pts)
        dts.append(packet.dts if packet.dts is not None else packet.pts)
        key.append(packet.is_keyframe)
    by_pts = None not in pts and len(set(pts)) == len(pts)
    pts_arr = np.array(pts if by_pts else [0] * len(pts), np.int64)
    dts_arr = np.array([0 if d is None else d for d in dts], np.int64)
    order = np.argsort(pts_arr, kind="stable") if by_pts else np.arange(len(pts))
    return StreamIndex(pts_arr, dts_arr, np.array(key, bool), order.astype(np.int64), by_pts)


def read_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    index: StreamIndex,
    wanted: Iterable[int],
    emit: Callable[[int, av.VideoFrame], None],
    skip_nonref: bool = True,
) -> int:
    """Decode the frames `wanted` (indices in presentation order) and call `emit(i, frame)`
    once per distinct index, in decode order.

    Args:
        skip_nonref: drop the non-reference packets that are not wanted (False: decode every
            packet of the runs, what a retry does when a wanted frame did not come out).

    Returns:
        Frames the decoder produced, wanted or not (tests and benchmarks count them).

    Raises:
        FrameReadError: a wanted frame never came out of the decoder, even without skipping.
    """
    targets = {int(i) for i in wanted}
    if not targets:
        return 0
    if min(targets) < 0 or max(targets) >= index.num_frames:
        raise FrameReadError(f"frames {sorted(targets)} outside 0..{index.num_frames - 1}")
    done: set[int] = set()

    def once(i: int, frame: av.VideoFrame) -> None:
        if i in targets and i not in done:
            done.add(i)
            emit(i, frame)

    read = _read_by_pts if index.by_pts else _read_in_order
    decoded = read(container, stream, index, targets, once, skip_nonref)
    if done != targets and skip_nonref:
        decoded += read(container, stream, index, targets - done, once, False)
    if done != targets:
        raise FrameReadError(f"frames {sorted(targets - done)[:8]} did not decode")
    return decoded


def _read_by_pts(container, stream, index, targets, emit, skip_nonref) -> int:
    """Decode the merged runs `[start_of(p), p]` of the wanted packets, one seek each."""
    positions = sorted(int(index.order[i]) for i in targets)
    runs: list[list[int]] = []
    for start, end in sorted((index.start_of(p), p) for p in positions):
        if runs and start <= runs[-1][1] + 1:  # overlapping or adjacent: one run
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    rank = np.empty_like(index.order)
    rank[index.order] = np.arange(index.num_frames)
    frame_at = dict(zip(index.pts.tolist(), rank.tolist(), strict=True))
    wanted = set(positions)
    codec = stream.codec_context
    decoded = 0
    for start, end in runs:
        for position, packet in _packets(container, stream, index, start, end):
            skip = skip_nonref and position not in wanted
            codec.skip_frame = "NONREF" if skip else "DEFAULT"
            decoded += _emit(codec.decode(packet), frame_at, emit)
        codec.skip_frame = "DEFAULT"
        decoded += _emit(codec.decode(None), frame_at, emit)  # drain the reorder buffer
        codec.flush_buffers()
    return decoded


def _read_in_order(container, stream, index, targets, emit, skip_nonref) -> int:
    """No usable timestamps: decode from the first packet, frame `i` being the i-th out."""
    del index, skip_nonref  # frames are told apart by their count: none may be dropped
    container.seek(0, backward=True, any_frame=False)
    codec = stream.codec_context
    codec.flush_buffers()
    count, last = 0, max(targets)
    packets = (p for p in container.demux(stream) if not _is_flush(p))
    for packet in itertools.chain(packets, [None]):  # None drains the reorder buffer
        for frame in codec.decode(packet):
            emit(count, frame)
            count += 1
        if count > last:
            break
    codec.flush_buffers()
    return count


def _packets(container, stream, index: StreamIndex, start: int, end: int):
    """`(position, packet)` for the decode positions `start..end` of `stream`, after a seek to
    the keyframe at `start` (or a scan from the beginning when the seek lands past it)."""
    for attempt in range(2):
        container.seek(int(index.dts[start]) if attempt == 0 else 0, stream=stream, backward=True)
        stream.codec_context.flush_buffers()
        position = None
        for packet in container.demux(stream):
            if _is_flush(packet):
                break
            if position is None:
                hits = np.flatnonzero(index.pts == packet.pts)
                if len(hits) != 1 or hits[0] > start:
                    break  # past the keyframe (or lost): try again from the beginning
                position = int(hits[0])
            else:
                position += 1
                if position >= index.num_frames or packet.pts != index.pts[position]:
                    raise FrameReadError(f"the demuxer's packet {position} is not the indexed one")
            if position >= start:
                yield position, packet
            if position >= end:
                return
        if position is not None:
            return  # the stream ended before `end`: the caller sees what is missing
    raise FrameReadError(f"cannot seek to packet {start}")


def _emit(frames, frame_at: dict[int, int], emit) -> int:
    count = 0
    for frame in frames:
        count += 1
        i = frame_at.get(frame.pts) if frame.pts is not None else None
        if i is not None:
            emit(i, frame)
    return count


def _is_flush(packet: av.Packet) -> bool:
    """The empty packet PyAV's demux yields per stream at the end of the file."""
    return packet.size == 0 and packet.pts is None and packet.dts is None


def snap_to_keyframes(index: StreamIndex, indices: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Approximate sampling: each frame moves to the keyframe nearest to it within its own
    segment of the middle rule (ties: the earlier one), so that it decodes alone; a frame
    whose segment holds no keyframe stays where it is (decoded exactly).

    Args:
        indices: int64 `[T]` frames of one clip; segments: int64 `[T, 2]` their `[a, b)`.

    Returns:
        int64 `[T]` frame indices.
    """
    keys = index.keyframe_indices()
    out = np.array(indices, np.int64, copy=True)
    for k, (target, (a, b)) in enumerate(zip(indices, segments, strict=True)):
        inside = keys[(keys >= a) & (keys < b)]
        if len(inside):
            out[k] = inside[np.argmin(np.abs(inside - target))]  # argmin: first of a tie
    return out
