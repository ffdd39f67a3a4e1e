"""`python -m shared.cli …`: see `shared.cli` for the commands."""

from shared.cli import main

raise SystemExit(main())
