"""Each package's public surface is exactly its sorted ``__all__`` (cf. httpx's test of the same name).

Add one ``test_<package>_all_sorted_and_complete`` per package, calling :func:`check_exports`.
"""

import __future__

from types import ModuleType

import subjects


def check_exports(module: ModuleType) -> None:
    """``module.__all__`` is sorted, has no duplicates, and names exactly the public attributes.

    Public means: not starting with ``_``, not a submodule and not a ``from __future__`` feature.
    """
    exported = list(module.__all__)
    assert exported == sorted(exported), f"{module.__name__}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{module.__name__}.__all__ has duplicates"
    missing = [name for name in exported if not hasattr(module, name)]
    assert not missing, f"{module.__name__}.__all__ names missing attributes: {missing}"
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, ModuleType | __future__._Feature)
    }
    unexported = sorted(public - set(exported))
    assert not unexported, f"{module.__name__} has public names missing from __all__: {unexported}"


def test_subjects_all_sorted_and_complete() -> None:
    check_exports(subjects)


def test_conat_all_sorted_and_complete() -> None:
    import conat

    check_exports(conat)


def test_cli_plugin_all_sorted_and_complete() -> None:
    from conat.cli import plugin

    check_exports(plugin)


def test_conat_beneath_all_sorted_and_complete() -> None:
    from conat import beneath

    check_exports(beneath)


def test_host_all_sorted_and_complete() -> None:
    import host

    check_exports(host)


def test_persist_testing_all_sorted_and_complete() -> None:
    from persist import testing

    check_exports(testing)


def test_master_all_sorted_and_complete() -> None:
    import master

    check_exports(master)


def test_conat_platform_all_sorted_and_complete() -> None:
    """conat.platform is a module, not a package: its public names are what it defines or
    re-exports from conat's private modules (its imports of typing names are not public)."""
    from conat import platform

    exported = list(platform.__all__)
    assert exported == sorted(exported), "conat.platform.__all__ is not sorted"
    assert len(set(exported)) == len(exported), "conat.platform.__all__ has duplicates"
    assert all(hasattr(platform, name) for name in exported)
    public = {
        name
        for name, value in vars(platform).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("conat.")
    }
    assert not public - set(exported), sorted(public - set(exported))
