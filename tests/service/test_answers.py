from fakescope.answers import AnswerEntry, answer_index, detection_answers, explanation_answers


def test_numeric_stems_are_the_index() -> None:
    assert answer_index(["10.png", "2.jpg", "dir/33.png"]) == [10, 2, 33]


def test_non_numeric_stems_use_sorted_position() -> None:
    assert answer_index(["b.png", "a.png", "10.png"]) == [3, 2, 1]


def test_duplicate_numeric_stems_fall_back_to_position() -> None:
    assert answer_index(["x/1.png", "y/1.png", "2.png"]) == [2, 3, 1]


def test_empty() -> None:
    assert answer_index([]) == []
    assert detection_answers([]) == []


def test_task1_and_task2() -> None:
    entries = [
        AnswerEntry("3.png", "fake", {"texture": "too smooth."}),
        AnswerEntry("1.png", "real"),
        AnswerEntry("2.png", None),
        AnswerEntry("4.png", "fake"),
    ]
    assert detection_answers(entries) == [
        {"index": 1, "prediction": "real"},
        {"index": 3, "prediction": "fake"},
        {"index": 4, "prediction": "fake"},
    ]
    assert explanation_answers(entries) == [
        {"index": 3, "explanation": {"texture": "too smooth."}},
        {"index": 4, "explanation": {}},
    ]
