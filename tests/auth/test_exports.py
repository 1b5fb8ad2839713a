"""auth's public surface is exactly its sorted ``__all__``."""

import auth
from tests.test_exported_members import check_exports


def test_auth_all_sorted_and_complete() -> None:
    check_exports(auth)
