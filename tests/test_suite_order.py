"""The suite's own schedule (conftest.SLOW_FILES): the slowest files are handed to xdist's workers first."""

from pathlib import Path
from types import SimpleNamespace

from conftest import SLOW_FILES, _schedule_order

TESTS = Path(__file__).parent


def test_every_listed_slow_file_exists():
    missing = sorted(name for name in SLOW_FILES if not (TESTS / name).is_file())
    assert not missing, f"conftest.SLOW_FILES names files that are gone: {missing}"


def test_slow_files_come_first_slowest_first_then_the_rest_by_number_of_tests_in_their_own_order():
    def item(name, i):
        return SimpleNamespace(nodeid=f"tests/{name}::test_{i}", i=i)

    slowest, second = sorted(SLOW_FILES, key=SLOW_FILES.get, reverse=True)[:2]
    items = [
        item("test_small.py", 0),
        item("test_many.py", 0),
        item(second, 0),
        item("test_many.py", 1),
        item(slowest, 0),
        item(second, 1),
        item("test_many.py", 2),
        item(slowest, 1),
    ]
    order = [(it.nodeid.split("::")[0][len("tests/") :], it.i) for it in _schedule_order(items)]
    assert order == [
        (slowest, 0),
        (slowest, 1),
        (second, 0),
        (second, 1),
        ("test_many.py", 0),
        ("test_many.py", 1),
        ("test_many.py", 2),
        ("test_small.py", 0),
    ]
