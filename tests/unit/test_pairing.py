"""The paper's multi-completion pairing rule, worked out by hand."""

import pytest

from mmrm.convert.pairing import completion_score, pairs_from_completions
from mmrm.formats import Completion, parse_completions
from mmrm.ledger import FieldProblem, Ledger



def completion(*ratings, response="r"):
    return Completion(response=response, model=None,
                      annotations={f"aspect{i}": {"Rating": r, "Rationale": "..."}
                                   for i, r in enumerate(ratings)})


def test_score_is_the_mean_over_aspects():
    # (4 + 5 + 3) / 3 = 4.0 ; strings and numbers both parse
    assert completion_score(completion("4", 5, "3"), 0) == 4.0
    assert completion_score(completion("2", "3"), 0) == 2.5


def test_unparseable_and_non_finite_ratings_have_no_score():
    assert completion_score(completion("4", "N/A"), 0) is None
    assert completion_score(completion("nan"), 0) is None


def test_ratings_of_a_wrong_type_are_schema_errors():
    with pytest.raises(FieldProblem) as caught:
        completion_score(completion("4", ["5"]), 2)
    assert caught.value.field == "completions[2].annotations.aspect1.Rating"
    assert caught.value.reason == "wrong_type"
    with pytest.raises(FieldProblem, match="missing"):
        completion_score(Completion("r", None, {"Helpfulness": {"Rationale": "x"}}), 0)


def test_all_unordered_pairs_with_different_scores():
    # scores: c0 = 4.5, c1 = 2.0, c2 = 4.5 (ties c0), c3 = unparseable
    completions = [completion("4", "5"), completion("2", "2"), completion("5", "4"),
                   completion("3", "N/A")]
    ledger = Ledger()
    pairs = pairs_from_completions(completions, ledger, where="f.jsonl:7")
    # 6 candidates: (0,1) kept, (0,2) tie, (0,3) N/A, (1,2) kept as 2>1, (1,3) N/A, (2,3) N/A
    assert [(p.chosen, p.rejected, p.chosen_score, p.rejected_score) for p in pairs] == \
        [(0, 1, 4.5, 2.0), (2, 1, 4.5, 2.0)]
    assert ledger.read == 6
    assert ledger.skipped_by_reason == {"tie": 1, "unparseable_rating": 3}
    assert ledger.examples[0] == \
        "f.jsonl:7: completions[3].annotations.aspect1.Rating: 'N/A' is not a number"


def test_dict_of_lists_gives_the_same_completions_as_list_of_objects():
    rows = [{"annotations": {"H": {"Rating": "3"}}, "model": "a", "response": "x"},
            {"annotations": {"H": {"Rating": "1"}}, "model": "b", "response": "y"}]
    columns = {"annotations": [r["annotations"] for r in rows], "model": ["a", "b"],
               "response": ["x", "y"]}
    assert parse_completions(rows) == parse_completions(columns)
