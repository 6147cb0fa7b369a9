"""``python -m nnbound`` runs the CLI."""

from nnbound.cli.main import main

raise SystemExit(main())
