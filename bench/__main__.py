"""``python -m bench``."""

from . import main

raise SystemExit(main())
