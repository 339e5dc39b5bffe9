"""`python -m metering ...` is the same as the `metering` command."""

from metering.cli import main

raise SystemExit(main())
