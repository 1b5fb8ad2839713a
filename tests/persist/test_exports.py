import persist
from tests.test_exported_members import check_exports


def test_persist_all_sorted_and_complete() -> None:
    check_exports(persist)
