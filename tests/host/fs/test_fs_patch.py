"""The delta patch applier: its exact splice agrees with diff-match-patch, which stays the fallback."""

from __future__ import annotations

import diff_match_patch as dmp_module
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host._fs_patch import PatchFailed, apply_patch

DMP = dmp_module.diff_match_patch()
texts = st.text(alphabet="ab \n\u00e9\U0001f600", max_size=300)


def make(old: str, new: str) -> str:
    return str(DMP.patch_toText(DMP.patch_make(old, new)))


@settings(max_examples=300, deadline=None)
@given(texts, texts)
def test_a_patch_made_against_the_text_gives_the_new_text(old: str, new: str) -> None:
    assert apply_patch(old, make(old, new)) == new


@settings(max_examples=200, deadline=None)
@given(texts, texts, st.text(alphabet="xyz", min_size=1, max_size=20))
def test_where_the_hunks_moved_it_answers_as_diff_match_patch_does(old: str, new: str, prefix: str) -> None:
    """The file changed before the patch (a prefix added): the splice declines, and the fallback gives
    diff-match-patch's own answer, or PatchFailed where it reports hunks that do not apply."""
    patch = make(old, new)
    expected, applied = DMP.patch_apply(DMP.patch_fromText(patch), prefix + old)
    if all(applied):
        assert apply_patch(prefix + old, patch) == expected
    else:
        with pytest.raises(PatchFailed, match="hunks do not apply"):
            apply_patch(prefix + old, patch)


def test_a_small_edit_in_a_large_text_is_spliced_in_place() -> None:
    line = "the quick brown fox jumps over the lazy dog 0123456789\n"
    base = line * 20_000
    edited = base[:500_000] + "edit " + base[500_000:]
    assert apply_patch(base, make(base, edited)) == edited


def test_garbage_does_not_parse() -> None:
    with pytest.raises(PatchFailed, match="does not parse"):
        apply_patch("text", "@@ nonsense @@\n")
