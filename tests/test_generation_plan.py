"""How one engine's work is cut into jobs and chunks: every prompt once, in order, parts of similar cost."""

import pytest

from finetox.generation_plan import Piece, Segment, cut, shards


def rows(parts):
    """(segment key, row) of every prompt, in the order the parts hold them."""
    return [(p.segment.key, row) for part in parts for p in part for row in range(p.start, p.stop)]


SEGMENTS = [Segment("rtp", "study", "instruct", 2000, 50), Segment("rtp", "study", "dolly", 2000, 50),
            Segment("rtp", "rtp", "instruct", 2000, 25 * 20), Segment("severe", "study", "instruct", 7, 50)]


@pytest.mark.parametrize("budget", [None, 10**9, 1_000_000, 250_000, 77_777, 5_000])
def test_every_prompt_is_in_one_part_in_order_and_parts_cost_alike(budget):
    parts = shards(SEGMENTS, budget)
    assert rows(parts) == [(s.key, row) for s in SEGMENTS for row in range(s.prompts)]
    total = sum(s.prompts * s.tokens_per_prompt for s in SEGMENTS)  # 1,200,350 estimated tokens
    costs = [sum(p.cost for p in part) for part in parts]
    if budget is None or budget >= total:
        assert len(parts) == 1
    else:
        assert len(parts) == -(-total // budget)
        # a cut falls on a whole prompt: a part is off its share by less than the costliest prompt
        assert max(abs(c - total / len(parts)) for c in costs) < 500


def test_cuts_inside_a_segment_fall_on_whole_batches():
    segment = Segment("p", "greedy", "v", 100, 10)
    parts = cut([Piece(segment, 0, 100)], 300, multiple=16)
    cuts = [part[0].start for part in parts[1:]]
    assert len(parts) == 4 and all(c % 16 == 0 for c in cuts)
    # a segment's end is a cut too, whatever its size
    assert [p.stop for part in cut([Piece(Segment("p", "g", "a", 3, 10), 0, 3), Piece(Segment("p", "g", "b", 3, 10), 0, 3)], 30, 16)
            for p in part] == [3, 3]


def test_an_empty_probe_set_costs_no_job():
    assert shards([Segment("p", "g", "a", 0, 10)], 100) == []
