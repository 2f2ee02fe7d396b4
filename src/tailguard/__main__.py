"""``python -m tailguard`` runs the ``tailguard`` command."""

from tailguard.cli import main

raise SystemExit(main())
