"""The test-clip builder itself: the clips decode to the frames and truth they claim."""

from __future__ import annotations

import av

from tests.video.clips import Clip


def decoded_frames(clip: Clip) -> int:
    with av.open(str(clip.path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_crowd_clip_decodes_to_its_frames_with_people_entering_leaving_and_covered(
    crowd: Clip,
) -> None:
    assert decoded_frames(crowd) == crowd.frame_count == len(crowd.tiles)
    first, _second, third, fourth = (p.name for p in crowd.people)
    assert (third in crowd.tiles[0], third in crowd.tiles[30]) == (False, True)  # walks in
    assert (fourth in crowd.tiles[30], fourth in crowd.tiles[55]) == (True, False)  # walks out
    assert (first in crowd.tiles[27], first in crowd.tiles[31]) == (False, True)  # covered
    assert all(p.age is not None and p.gender in ("F", "M") for p in crowd.people)


def test_cut_clip_changes_every_person_at_the_cut_and_carries_audio(cut: Clip) -> None:
    assert cut.cuts == (30,)
    assert set(cut.tiles[29]).isdisjoint(cut.tiles[30])
    with av.open(str(cut.path)) as container:
        assert len(container.streams.audio) == 1
    assert decoded_frames(cut) == 60
