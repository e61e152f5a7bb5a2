"""Consensus of a comparative job: pure maths over the candidates' answers.

Answers are compared after `normalise` (case, whitespace, surrounding quotes and trailing
punctuation do not count). `agreement` is the winner's share of the vote (of the weight, for a
weighted vote; for a judge, the weight of the answers equal to the judged one). Below
`min_agreement` the outcome is recorded with ``reached = False`` — a result, not an error.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from events.patterns import Consensus
from projections.job_state import JobState

_SPACE = re.compile(r"\s+")
_EDGE = " \t\n\"'`.,;:!?"
_NUMBER = re.compile(r"\d+")


class Vote(BaseModel):
    """One candidate's answer in a comparison."""

    model_config = ConfigDict(frozen=True)

    index: int
    model: str
    output: str
    weight: float = 1.0


def normalise(text: str) -> str:
    """The form answers are compared in."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACE.sub(" ", text).strip(_EDGE)


def _groups(votes: Sequence[Vote]) -> list[list[Vote]]:
    by: dict[str, list[Vote]] = {}
    for v in votes:
        by.setdefault(normalise(v.output), []).append(v)
    return list(by.values())


def vote(votes: Sequence[Vote], *, weighted: bool, min_agreement: float) -> Consensus:
    """Majority (each answer one vote) or weighted vote; ties go to the earliest candidate."""
    method = "weighted" if weighted else "majority"
    if not votes:
        return Consensus(
            method=method, reached=False, agreement=0.0, min_agreement=min_agreement,
            reason="no candidate answered",
        )  # fmt: skip
    groups = _groups(votes)

    def score(group: list[Vote]) -> float:
        return sum(v.weight for v in group) if weighted else float(len(group))

    total = sum(score([v]) for v in votes)
    best = max(groups, key=lambda g: (score(g), -min(v.index for v in g)))
    winner = min(best, key=lambda v: v.index)
    return _decided(method, winner, score(best) / total, min_agreement, groups)


def _decided(
    method: str, winner: Vote, agreement: float, min_agreement: float, groups: list[list[Vote]]
) -> Consensus:
    agreement = round(agreement, 6)
    reached = agreement >= min_agreement
    return Consensus(
        method=method,
        reached=reached,
        agreement=agreement,
        min_agreement=min_agreement,
        winner=winner.index,
        winner_model=winner.model,
        groups=tuple(tuple(v.index for v in g) for g in groups),
        reason="" if reached else f"agreement {agreement:.2f} is below {min_agreement:.2f}",
    )


def parse_judgement(text: str, candidates: int) -> int | None:
    """The 1-based candidate number a judge answered, as a 0-based index (None if none valid)."""
    for m in _NUMBER.finditer(text):
        n = int(m.group())
        if 1 <= n <= candidates:
            return n - 1
    return None


def judged(votes: Sequence[Vote], judgement: str, *, min_agreement: float) -> Consensus:
    """The judge's pick; agreement is the weight share of answers equal to the picked one."""
    pick = parse_judgement(judgement, len(votes))
    groups = _groups(votes)
    if pick is None:
        return Consensus(
            method="judge", reached=False, agreement=0.0, min_agreement=min_agreement,
            groups=tuple(tuple(v.index for v in g) for g in groups),
            reason=f"the judge's answer names no candidate 1-{len(votes)}: {judgement[:200]!r}",
        )  # fmt: skip
    chosen = votes[pick]
    same = [v for v in votes if normalise(v.output) == normalise(chosen.output)]
    agreement = sum(v.weight for v in same) / sum(v.weight for v in votes)
    return _decided("judge", chosen, agreement, min_agreement, groups)


def listing(votes: Sequence[Vote]) -> str:
    """The candidates as the judge reads them: numbered from 1."""
    return "\n\n".join(f"{i}. {v.output}" for i, v in enumerate(votes, 1))


def votes_of(state: JobState) -> list[Vote]:
    """The completed candidates of a comparative job, as votes."""
    spec = state.comparative
    assert spec is not None
    return [
        Vote(
            index=t.index,
            model=t.model,
            output=t.output or "",
            weight=spec.candidates[t.index].weight,
        )
        for t in state.tasks
        if t.role == "candidate" and t.status == "completed"
    ]
