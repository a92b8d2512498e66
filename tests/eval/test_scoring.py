import pytest

from megatron_ext.eval.scoring import clean_prediction, recall_score


def test_answer_found_anywhere_in_generation():
    assert recall_score(" 4821337.\nThat is all.", ["4821337"]) == 1.0
    assert recall_score("The number is 4821337", ["4821337"]) == 1.0
    assert recall_score(" 482133", ["4821337"]) == 0.0
    assert recall_score("", ["4821337"]) == 0.0


def test_case_insensitive_and_partial_credit():
    uuid = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
    assert recall_score(uuid.lower(), [uuid]) == 1.0
    assert recall_score("alpha, gamma", ["alpha", "beta", "gamma", "delta"]) == 0.5


def test_control_characters_do_not_glue_tokens():
    assert clean_prediction("\t 12\x0034 \n") == "12\n34"


def test_no_answers_is_an_error():
    with pytest.raises(ValueError):
        recall_score("x", [])
