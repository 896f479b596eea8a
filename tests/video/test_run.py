"""`agelens video` and run_video: every output, damaged and empty inputs, with real models."""

from __future__ import annotations

from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from agelens.cli import EXIT_SOME_FAILED, EXIT_USAGE, app
from agelens.errors import VideoSourceError
from agelens.pipeline import Analyzer
from agelens.video.output import PEOPLE_COLUMNS, TRACK_COLUMNS, read_table
from agelens.video.run import run_video
from tests.video.clips import Clip, corrupted_copy, encode, truncated_copy

runner = CliRunner()


def video_streams(path: Path) -> dict[str, object]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        return {
            "size": (video.width, video.height),
            "fps": float(video.average_rate),
            "frames": sum(1 for _ in container.decode(video=0)),
            "audio": len(container.streams.audio),
        }


def test_the_cli_writes_tracks_people_annotated_video_and_crops(cut: Clip, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "video",
            str(cut.path),
            "--out",
            str(tmp_path / "tracks.parquet"),
            "--summary",
            str(tmp_path / "people.csv"),
            "--draw",
            str(tmp_path / "annotated.mp4"),
            "--crops",
            str(tmp_path / "crops"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "60 frames, 4 people" in result.output
    tracks = pq.read_table(tmp_path / "tracks.parquet")
    assert tracks.column_names == [name for name, _ in TRACK_COLUMNS]
    assert sorted(set(tracks["track_id"].to_pylist())) == [1, 2, 3, 4]
    assert set(tracks["frame_index"].to_pylist()) == set(range(60))
    people = read_table(tmp_path / "people.csv", PEOPLE_COLUMNS).to_pylist()
    assert [p["track_id"] for p in people] == [1, 2, 3, 4]
    assert all(p["gender"] in ("F", "M") and p["age_years"] > 15 for p in people)
    assert sorted(p.name for p in (tmp_path / "crops").iterdir()) == [p["crop"] for p in people]
    # Same size and frame rate, every frame, and the clip's audio track kept.
    assert video_streams(tmp_path / "annotated.mp4") == {
        "size": cut.size,
        "fps": cut.fps,
        "frames": 60,
        "audio": 1,
    }


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_track_rows_in_every_format_read_back_the_same(
    crowd: Clip, analyzer: Analyzer, tmp_path: Path, suffix: str
) -> None:
    run_video(crowd.path, analyzer, out=tmp_path / f"tracks{suffix}")
    run_video(crowd.path, analyzer, out=tmp_path / "tracks.parquet")
    text = read_table(tmp_path / f"tracks{suffix}", TRACK_COLUMNS).to_pylist()
    binary = read_table(tmp_path / "tracks.parquet", TRACK_COLUMNS).to_pylist()
    assert len(text) == len(binary) > 100
    assert [(r["frame_index"], r["track_id"]) for r in text] == [
        (r["frame_index"], r["track_id"]) for r in binary
    ]


def test_audio_the_container_cannot_hold_is_dropped_cleanly(
    cut: Clip, analyzer: Analyzer, tmp_path: Path
) -> None:
    # The cut clip's AAC audio has no place in WebM (Opus/Vorbis only).
    run_video(cut.path, analyzer, draw=tmp_path / "annotated.webm")
    assert video_streams(tmp_path / "annotated.webm") == {
        "size": cut.size,
        "fps": cut.fps,
        "frames": 60,
        "audio": 0,
    }


def test_a_truncated_video_keeps_its_frames_and_reports_the_error(
    crowd: Clip, tmp_path: Path
) -> None:
    with av.open(str(crowd.path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    whole = encode(tmp_path / "crowd.mkv", frames, crowd.fps)
    damaged = truncated_copy(whole, tmp_path / "truncated.mkv", keep=0.5)
    out = tmp_path / "tracks.parquet"
    result = runner.invoke(app, ["video", str(damaged), "--out", str(out), "-q"])
    assert result.exit_code == EXIT_SOME_FAILED
    assert "truncated" in result.output
    kept = set(pq.read_table(out)["frame_index"].to_pylist())
    assert 10 < len(kept) < 60
    assert kept == set(range(len(kept)))


def test_a_corrupt_video_keeps_its_frames_and_reports_the_error(
    crowd: Clip, analyzer: Analyzer, tmp_path: Path
) -> None:
    damaged = corrupted_copy(crowd.path, tmp_path / "corrupt.mp4", start=0.5, end=0.7)
    run = run_video(damaged, analyzer, out=tmp_path / "tracks.jsonl", draw=tmp_path / "a.mp4")
    assert run.error is not None
    assert 10 < run.frames < 60
    assert video_streams(tmp_path / "a.mp4")["frames"] == run.frames


def test_a_zero_length_file_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    out = tmp_path / "tracks.parquet"
    result = runner.invoke(app, ["video", str(empty), "--out", str(out)])
    assert result.exit_code == EXIT_SOME_FAILED
    assert "empty (0 bytes)" in result.output
    assert not out.exists()
    with pytest.raises(VideoSourceError):
        run_video(empty, Analyzer.__new__(Analyzer), out=out)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "nothing to write"),
        (["--out", "tracks.xlsx"], "suffix"),
        (["--out", "t.parquet", "--detect-every", "0"], "at least 1"),
        (["--out", "t.parquet", "--preset", "nope"], "unknown preset"),
    ],
)
def test_usage_errors_say_what_to_do(
    cut: Clip, tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = runner.invoke(app, ["video", str(cut.path), *arguments])
    assert result.exit_code == EXIT_USAGE
    assert message in result.output


def test_ctrl_c_ends_the_run_and_keeps_what_was_done(
    crowd: Clip, analyzer: Analyzer, tmp_path: Path
) -> None:
    def interrupt_at_ten(done: int, _expected: int | None) -> None:
        if done == 10:
            raise KeyboardInterrupt

    out, people = tmp_path / "tracks.parquet", tmp_path / "people.csv"
    run = run_video(crowd.path, analyzer, out=out, summary=people, progress=interrupt_at_ten)
    assert (run.interrupted, run.live, run.frames) == (True, False, 10)
    assert max(pq.read_table(out)["frame_index"].to_pylist()) == 9
    assert len(read_table(people, PEOPLE_COLUMNS)) == 3
