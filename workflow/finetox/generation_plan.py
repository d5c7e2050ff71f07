"""How one generation engine's work is cut: into segments (probe set x protocol x variant it serves), jobs of
similar estimated cost (shards), and chunks that a job writes as it goes (the progress a rerun resumes from).

The cost of a prompt is estimated as its samples x max_new_tokens: the new tokens it can ask of the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    """The prompts of one probe set that one variant continues under one protocol."""

    probe: str
    protocol: str
    variant: str
    prompts: int
    tokens_per_prompt: int  # samples x max_new_tokens

    @property
    def key(self) -> str:
        return f"{self.probe}/{self.protocol}/{self.variant}"


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of a segment's probe table."""

    segment: Segment
    start: int
    stop: int

    @property
    def cost(self) -> int:
        return (self.stop - self.start) * self.segment.tokens_per_prompt


def samples(study, variant: str, protocol: str) -> int:
    """Continuations per prompt a variant asks of the engine under a protocol: the protocol's samples; for a
    guarded variant, its extra candidates (finetox.levers.guard; its first candidate is its source's answer)."""
    from finetox.levers.guard import extra_candidates

    guard = study.variants[variant].guard
    count = study.protocols[protocol].samples
    return extra_candidates(guard, count) if guard else count


def segments(study, cells: list[tuple[str, str, str]], prompt_counts: dict[str, int]) -> list[Segment]:
    """The work of one engine's cells (probe set x protocol x variant; finetox.paths.generation_groups, whose
    name order means that reordering the config's probe sets, protocols or variants moves no prompt to another
    job). A guarded variant of one candidate asks for nothing."""
    return [
        Segment(probe, protocol, variant, prompt_counts[probe],
                samples(study, variant, protocol) * study.protocols[protocol].max_new_tokens)
        for probe, protocol, variant in cells if samples(study, variant, protocol)
    ]


def cut(pieces: list[Piece], budget: int | None, multiple: int = 1) -> list[list[Piece]]:
    """The pieces, in order, cut into the fewest parts of at most about `budget` estimated tokens, of similar
    cost; a cut inside a segment falls on a multiple of `multiple` rows (the transformers backend's batch, so that
    a greedy continuation's padding does not depend on the cuts). No budget: one part."""
    total = sum(piece.cost for piece in pieces)
    count = 1 if not budget or total <= budget else math.ceil(total / budget)
    bounds = [total * i / count for i in range(1, count)]
    parts: list[list[Piece]] = []
    current: list[Piece] = []
    done = 0  # estimated tokens placed in parts so far
    for piece in pieces:
        start, per = piece.start, piece.segment.tokens_per_prompt
        while bounds and done + (piece.stop - start) * per >= bounds[0]:
            row = start + (bounds.pop(0) - done) / per
            # the nearest allowed cut: a multiple of `multiple`, or the piece's end
            lower = max(start, multiple * math.floor(row / multiple))
            upper = min(piece.stop, multiple * math.ceil(row / multiple))
            row = lower if row - lower <= upper - row else upper
            if row > start:
                current.append(Piece(piece.segment, start, row))
                done += (row - start) * per
                start = row
            if current:
                parts.append(current)
                current = []
        if start < piece.stop:
            current.append(Piece(piece.segment, start, piece.stop))
            done += (piece.stop - start) * per
    if current:
        parts.append(current)
    return parts


def shards(all_segments: list[Segment], tokens_per_job: int | None, multiple: int = 1) -> list[list[Piece]]:
    """The jobs one engine's work is split into: `generation.tokens_per_job` estimated tokens each at most
    (about; similar cost each), one job when it is null."""
    return cut([Piece(s, 0, s.prompts) for s in all_segments if s.prompts], tokens_per_job, multiple)


def batch_multiple(generation: dict) -> int:
    """Rows a cut inside a segment falls on a multiple of: the transformers backend's batch (its greedy
    continuations depend on their batch's padding); 1 for vLLM, which schedules its own batches."""
    return generation["batch_size"] if generation["backend"] == "transformers" else 1
