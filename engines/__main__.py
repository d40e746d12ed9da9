"""``python -m engines export|build|predict|evaluate``."""

from engines.cli import main

raise SystemExit(main())
