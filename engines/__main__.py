"""``python -m engines export|build``."""

from engines.cli import main

raise SystemExit(main())
