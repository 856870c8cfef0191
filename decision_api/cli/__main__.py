"""``python -m decision_api.cli``: the ``tailor`` command."""

from decision_api.cli.main import main

raise SystemExit(main())
