"""``python -m conat.cli``: the same as the ``conat`` command."""

from . import main

main()
