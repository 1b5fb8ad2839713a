"""Applying a ``write_file_delta`` patch (diff-match-patch's text format) to a file's text.

diff-match-patch's ``patch_apply`` places every hunk by fuzzy matching and rebuilds the whole text
once per hunk: about 7 ms for one small hunk in a 1 MiB file, more than writing the file again. A
delta is made against the exact text whose hash the caller sends (the hash is checked first), so
its hunks almost always sit exactly where they say. :func:`apply_patch` splices such hunks in one
pass over the text and leaves only the other cases (overlapping hunks, context that moved) to
diff-match-patch, whose result is the same when both apply.
"""

from __future__ import annotations

from typing import Final

import diff_match_patch as dmp_module

__all__ = ["PatchFailed", "apply_patch"]

_DMP: Final = dmp_module.diff_match_patch()


class PatchFailed(ValueError):
    """The patch does not parse, or some of its hunks do not apply; the message says which."""


def apply_patch(text: str, patch: str) -> str:
    """``text`` with ``patch`` applied; :class:`PatchFailed` if it does not parse or apply fully."""
    try:
        patches = _DMP.patch_fromText(patch)
    except (ValueError, IndexError) as e:
        raise PatchFailed(f"the patch does not parse: {e}") from None
    exact = _splice(text, patches)
    if exact is not None:
        return exact
    new, applied = _DMP.patch_apply(patches, text)
    if not all(applied):
        raise PatchFailed(f"{applied.count(False)} of {len(applied)} hunks do not apply")
    result: str = new
    return result


def _splice(text: str, patches: list[dmp_module.patch_obj]) -> str | None:
    """The hunks spliced in where their ``start1`` says, or None unless each one's old text is
    exactly there and the hunks come in order without overlapping. A hunk without old text (no
    context: the text was empty) has no place to check, so it is left to diff-match-patch."""
    pieces: list[str] = []
    position = 0
    for hunk in patches:
        old = _DMP.diff_text1(hunk.diffs)
        start = hunk.start1
        if not old or start < position or text[start : start + len(old)] != old:
            return None
        pieces.append(text[position:start])
        pieces.append(_DMP.diff_text2(hunk.diffs))
        position = start + len(old)
    pieces.append(text[position:])
    return "".join(pieces)
