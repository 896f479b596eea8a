"""Tracking and fusion on the built clips, with real models: the issue's "done means".

Each clip knows where every person is in every frame, so a track is matched to the person
whose tile holds its face's centre.
"""

from __future__ import annotations

import itertools
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import pytest

from agelens.pipeline import Analyzer
from agelens.video import FrameResult, TrackOptions, VideoTracker, summarize, track
from agelens.video.sources import VideoFrame
from agelens.video.tracking import face_sharpness
from tests.video.clips import Clip

#: UTKFace test MAE of the default (balanced) preset, README "Presets".
UTKFACE_MAE_YEARS = 4.76


@dataclass
class Tracked:
    """A clip tracked twice: with an estimate every frame (the per-frame baseline) and with
    the default options (what a user sees)."""

    clip: Clip
    every_frame: list[FrameResult]
    default: list[FrameResult]

    def people_of_tracks(self, results: list[FrameResult]) -> dict[int, Counter[str | None]]:
        seen: dict[int, Counter[str | None]] = defaultdict(Counter)
        for result in results:
            for face in result.faces:
                x1, y1, x2, y2 = face.box_xyxy
                centre = ((x1 + x2) / 2, (y1 + y2) / 2)
                seen[face.track_id][self.clip.person_at(result.index, centre)] += 1
        return seen


def tracked(clip: Clip, analyzer: Analyzer) -> Tracked:
    every_frame = list(track(clip.path, analyzer=analyzer, options=TrackOptions(estimate_every=1)))
    default = list(track(clip.path, analyzer=analyzer))
    return Tracked(clip, every_frame, default)


@pytest.fixture(scope="module")
def crowd_tracked(crowd: Clip, analyzer: Analyzer) -> Tracked:
    return tracked(crowd, analyzer)


@pytest.fixture(scope="module")
def cut_tracked(cut: Clip, analyzer: Analyzer) -> Tracked:
    return tracked(cut, analyzer)


@pytest.fixture(params=["crowd", "cut"])
def both(request: pytest.FixtureRequest) -> Tracked:
    result: Tracked = request.getfixturevalue(f"{request.param}_tracked")
    return result


def test_every_frame_is_yielded_in_order_with_its_timestamp(both: Tracked) -> None:
    assert [r.index for r in both.default] == list(range(both.clip.frame_count))
    assert both.default[15].timestamp_s == pytest.approx(15 / both.clip.fps, abs=1e-3)
    assert all(r.image_wh == both.clip.size for r in both.default)


def test_one_track_per_person_and_no_id_switches(both: Tracked) -> None:
    people = summarize(both.default)
    expected = len(both.clip.people)
    slack = len(both.clip.cuts)  # a cut may split or merge one person at most
    assert abs(len(people) - expected) <= slack
    tracks_of = both.people_of_tracks(both.default)
    names = {}
    for track_id, counts in tracks_of.items():
        # Every sighting of a track is the same person (faces never cross in these clips).
        assert len(counts) == 1, (track_id, counts)
        names[track_id] = next(iter(counts))
    # And each person is one track: the covered face and the walkers keep theirs.
    assert sorted(Counter(names.values()).values()) == [1] * len(names)
    assert set(names.values()) == {p.name for p in both.clip.people}


def test_a_covered_face_keeps_its_track_id(crowd_tracked: Tracked) -> None:
    first = crowd_tracked.clip.people[0].name
    ids = {
        track_id
        for track_id, counts in crowd_tracked.people_of_tracks(crowd_tracked.default).items()
        if first in counts
    }
    assert len(ids) == 1
    covered = crowd_tracked.default[27]
    assert len(covered.faces) == len(crowd_tracked.default[22].faces) - 1


def test_a_scene_cut_starts_new_tracks(cut_tracked: Tracked) -> None:
    before = {f.track_id for f in cut_tracked.default[29].faces}
    after = {f.track_id for f in cut_tracked.default[30].faces}
    assert before.isdisjoint(after)
    assert cut_tracked.default[30].scene == cut_tracked.default[29].scene + 1


def names_of_tracks(run: Tracked, results: list[FrameResult]) -> dict[int, str]:
    return {
        track_id: str(counts.most_common(1)[0][0])
        for track_id, counts in run.people_of_tracks(results).items()
    }


def test_fused_ages_are_within_utkface_mae(crowd_tracked: Tracked, cut_tracked: Tracked) -> None:
    errors = []
    for run in (crowd_tracked, cut_tracked):
        truth = {p.name: p for p in run.clip.people}
        names = names_of_tracks(run, run.default)
        for person in summarize(run.default):
            real = truth[names[person.track_id]]
            assert person.age_years is not None
            assert person.age_interval is not None
            assert real.age is not None
            errors.append(abs(person.age_years - real.age))
            low, high = person.age_interval
            assert low < person.age_years < high
    assert len(errors) == 8
    assert float(np.mean(errors)) <= UTKFACE_MAE_YEARS


@pytest.mark.parametrize("options", ["every_frame", "default"])
def test_fused_gender_is_right_where_the_per_frame_majority_is(
    crowd_tracked: Tracked, cut_tracked: Tracked, options: str
) -> None:
    """Per-frame majority of the estimates that were fused: every frame's with
    `estimate_every=1`, every 10th frame's with the defaults."""
    checked = 0
    for run in (crowd_tracked, cut_tracked):
        results = getattr(run, options)
        truth = {p.name: p for p in run.clip.people}
        names = names_of_tracks(run, results)
        votes: dict[int, list[bool]] = defaultdict(list)
        for result in results:
            for face in result.faces:
                if face.frame_estimate is not None:
                    votes[face.track_id].append(face.frame_estimate.gender_probability_male >= 0.5)
        for person in summarize(results):
            real = truth[names[person.track_id]]
            majority_male = sum(votes[person.track_id]) * 2 > len(votes[person.track_id])
            if majority_male == (real.gender == "M"):
                assert person.gender == real.gender, (real.name, person)
                checked += 1
    assert checked >= 6


def test_the_shown_age_flickers_at_least_3x_less_than_per_frame_estimates(
    both: Tracked,
) -> None:
    per_frame: dict[str | None, list[float]] = defaultdict(list)
    shown: dict[str | None, list[float]] = defaultdict(list)
    for results, store, own in ((both.every_frame, per_frame, True), (both.default, shown, False)):
        for result in results:
            for face in result.faces:
                x1, y1, x2, y2 = face.box_xyxy
                name = both.clip.person_at(result.index, ((x1 + x2) / 2, (y1 + y2) / 2))
                if own and face.frame_estimate is not None:
                    store[name].append(face.frame_estimate.age_years)
                elif not own and face.age_years is not None:
                    store[name].append(face.age_years)
    assert set(shown) == set(per_frame)
    for name, ages in per_frame.items():
        assert len(shown[name]) >= 10
        assert statistics.pstdev(shown[name]) * 3 <= statistics.pstdev(ages), name


def test_detecting_every_third_frame_holds_boxes_between_and_finds_the_same_people(
    crowd: Clip, analyzer: Analyzer
) -> None:
    results = list(track(crowd.path, analyzer=analyzer, options=TrackOptions(detect_every=3)))
    assert [r.detected for r in results[:6]] == [True, False, False, True, False, False]
    held = [[(f.track_id, f.box_xyxy) for f in r.faces] for r in results[:3]]
    assert held[0]
    assert held[0] == held[1] == held[2]
    assert all(f.frame_estimate is None for f in results[1].faces)
    assert len(summarize(results)) == len(crowd.people)


def test_small_and_blurred_faces_are_tracked_but_not_estimated(
    analyzer: Analyzer, astronaut: np.ndarray
) -> None:
    import cv2

    blurred = cv2.GaussianBlur(astronaut, (0, 0), 6)
    assert face_sharpness(blurred, (150, 40, 260, 170)) < TrackOptions().min_sharpness
    assert face_sharpness(astronaut, (150, 40, 260, 170)) > TrackOptions().min_sharpness
    tracker = VideoTracker(analyzer, 25.0)
    results = [tracker.process(VideoFrame(i, i / 25, blurred)) for i in range(3)]
    assert [len(r.faces) for r in results] == [1, 1, 1]
    assert all(f.frame_estimate is None and f.age_years is None for f in results[-1].faces)
    small = VideoTracker(analyzer, 25.0, TrackOptions(min_estimate_face_px=1000))
    last = [small.process(VideoFrame(i, i / 25, astronaut)) for i in range(3)][-1]
    assert last.faces[0].estimates == 0
    assert last.faces[0].label() == f"#{last.faces[0].track_id}"


def test_estimates_come_at_most_every_n_frames(crowd: Clip, analyzer: Analyzer) -> None:
    results = list(track(crowd.path, analyzer=analyzer, options=TrackOptions(estimate_every=4)))
    frames_of: dict[int, list[int]] = defaultdict(list)
    for result in results:
        for face in result.faces:
            if face.frame_estimate is not None:
                frames_of[face.track_id].append(result.index)
    assert frames_of
    for frames in frames_of.values():
        assert all(b - a >= 4 for a, b in itertools.pairwise(frames))


@pytest.mark.parametrize(
    "options",
    [{"detect_every": 0}, {"estimate_every": 0}, {"lost_after_s": -1}, {"first_answer_after": 0}],
)
def test_impossible_options_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        TrackOptions(**options)  # type: ignore[arg-type]
