"""``python -m mesh`` runs the ``edgemesh`` command line."""

from mesh.cli.main import main

raise SystemExit(main())
