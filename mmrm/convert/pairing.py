"""Multi-completion records to preference pairs, by the paper's rule.

A completion's score is the mean of ``float(annotations[aspect]["Rating"])`` over all of its
aspects. Every unordered pair of completions with different scores becomes a pair, the
higher-scored one chosen. A pair is skipped, and counted, when the two scores are equal
(``tie``) or when either completion has a rating that does not parse as a finite number
(``unparseable_rating``: VLFeedback's released ratings include strings such as ``"N/A"``, and
the paper's loader skips them). A rating of the wrong *type* (an object, a list, missing) is
a schema error of the record instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

from mmrm.formats import Completion
from mmrm.ledger import FieldProblem, Ledger


@dataclass(frozen=True)
class ScoredPair:
    chosen: int     # index into the record's completions
    rejected: int
    chosen_score: float
    rejected_score: float


def completion_score(completion: Completion, index: int) -> float | None:
    """Mean numeric rating over aspects; ``None`` when a rating does not parse as a number.

    >>> completion_score(Completion("r", None, {"A": {"Rating": "4"}, "B": {"Rating": 5}}), 0)
    4.5

    Raises:
        FieldProblem: an aspect that is not an object, or a rating missing or of a wrong type.
    """
    ratings = []
    for aspect, value in completion.annotations.items():
        name = f"completions[{index}].annotations.{aspect}"
        if not isinstance(value, dict):
            raise FieldProblem(name, f"expected an object with 'Rating', got "
                                     f"{type(value).__name__}", "wrong_type")
        if "Rating" not in value:
            raise FieldProblem(f"{name}.Rating", "missing", "missing_field")
        rating = value["Rating"]
        if isinstance(rating, bool) or not isinstance(rating, (str, int, float)):
            raise FieldProblem(f"{name}.Rating", f"expected a string or number, got "
                                                 f"{type(rating).__name__}", "wrong_type")
        try:
            number = float(rating)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        ratings.append(number)
    return sum(ratings) / len(ratings)


def unparseable_rating(completion: Completion, index: int) -> str:
    """Names the first rating of a completion that is not a number (for skip examples)."""
    for aspect, value in completion.annotations.items():
        try:
            if math.isfinite(float(value["Rating"])):
                continue
        except ValueError:
            pass
        return f"completions[{index}].annotations.{aspect}.Rating: {value['Rating']!r} " \
               f"is not a number"
    return f"completions[{index}]: no unparseable rating"


def pairs_from_completions(completions: tuple[Completion, ...] | list[Completion],
                           pair_ledger: Ledger, where: str = "") -> list[ScoredPair]:
    """All unordered pairs of completions with different scores, higher score chosen.

    Every candidate pair is counted in ``pair_ledger``: ``read`` grows by n*(n-1)/2 and each
    candidate is either returned (the caller counts it written) or skipped by reason.

    Args:
        completions: the record's completions.
        pair_ledger: ledger of candidate pairs.
        where: ``file:line`` of the record, for skip examples.

    Raises:
        FieldProblem: a rating of the wrong type (a record-level schema error).
    """
    scores = [completion_score(c, i) for i, c in enumerate(completions)]
    pairs = []
    for i, j in combinations(range(len(completions)), 2):
        pair_ledger.read += 1
        if scores[i] is None or scores[j] is None:
            bad = i if scores[i] is None else j
            pair_ledger.skip("unparseable_rating",
                             f"{where}: {unparseable_rating(completions[bad], bad)}")
        elif scores[i] == scores[j]:
            pair_ledger.skip("tie")
        elif scores[i] > scores[j]:
            pairs.append(ScoredPair(i, j, scores[i], scores[j]))
        else:
            pairs.append(ScoredPair(j, i, scores[j], scores[i]))
    return pairs
