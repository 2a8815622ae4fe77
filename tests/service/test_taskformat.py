from fakescope.taskformat import TaskEntry, task1, task2, task_index


def test_numeric_stems_are_the_index():
    assert task_index(["10.png", "2.jpg", "dir/33.png"]) == [10, 2, 33]


def test_non_numeric_stems_use_sorted_position():
    assert task_index(["b.png", "a.png", "10.png"]) == [3, 2, 1]


def test_duplicate_numeric_stems_fall_back_to_position():
    assert task_index(["x/1.png", "y/1.png", "2.png"]) == [2, 3, 1]


def test_empty():
    assert task_index([]) == []
    assert task1([]) == []


def test_task1_and_task2():
    entries = [
        TaskEntry("3.png", "fake", {"texture": "too smooth."}),
        TaskEntry("1.png", "real"),
        TaskEntry("2.png", None),
        TaskEntry("4.png", "fake"),
    ]
    assert task1(entries) == [
        {"index": 1, "prediction": "real"},
        {"index": 3, "prediction": "fake"},
        {"index": 4, "prediction": "fake"},
    ]
    assert task2(entries) == [{"index": 3, "explanation": {"texture": "too smooth."}}, {"index": 4, "explanation": {}}]
