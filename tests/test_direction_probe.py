"""benchmarks/direction_probe.py: both readouts trained and reported, bad settings refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "direction_probe.py"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_probe_trains_and_reports_both_readouts(tmp_path):
    out = tmp_path / "probe.json"
    done = _run(
        "--steps", "3", "--eval-every", "2", "--train-videos", "12", "--held-out-videos", "6",
        "--threads", "1", "--cache", str(tmp_path / "cache"), "--json", str(out),
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"pooled", "frames"}
    for history in result["runs"].values():
        assert [row["step"] for row in history] == [2, 3]
        for row in history:
            assert 0.0 <= row["held_out"] <= 1.0 and 0.0 <= row["held_out_backwards"] <= 1.0
            # 6 held-out clips: every accuracy is a count of them
            assert row["held_out"] * 6 == pytest.approx(round(row["held_out"] * 6), abs=1e-3)
    assert result["train_videos"] == 12 and result["held_out_videos"] == 6
    assert result["motion_position_scale"] == 8.0  # the training script's initialization
    # The table and the ratio go to stdout, the logs to stderr.
    assert "| readout | step |" in done.stdout and "frames / pooled" in done.stdout
    assert "| pooled | 3 |" in done.stdout and "| frames | 3 |" in done.stdout
    assert "INFO" not in done.stdout
    # The same seed gives the same numbers (the frames now come from the cache).
    again = _run(
        "--steps", "3", "--eval-every", "2", "--train-videos", "12", "--held-out-videos", "6",
        "--threads", "1", "--cache", str(tmp_path / "cache"), "--json", str(tmp_path / "2.json"),
        cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    second = json.loads((tmp_path / "2.json").read_text())
    for readout, history in result["runs"].items():
        for first_row, second_row in zip(history, second["runs"][readout], strict=True):
            first_row.pop("seconds"), second_row.pop("seconds")
            assert first_row == second_row


@pytest.mark.parametrize(
    "args",
    [["--steps", "0"], ["--lr", "-1"], ["--eval-every", "0"], ["--motion-position-scale", "-1"]],
)
def test_bad_settings_exit_2_before_any_work(tmp_path, args):
    done = _run(*args, "--cache", str(tmp_path / "cache"), cwd=tmp_path)
    assert done.returncode == 2
    assert "error:" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "cache").exists()
