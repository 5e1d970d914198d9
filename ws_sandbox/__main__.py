"""``python -m ws_sandbox`` is the ``ws-sandbox`` command."""

from ws_sandbox.cli import main

raise SystemExit(main())
