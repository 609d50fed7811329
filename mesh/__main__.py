"""``python -m mesh`` runs the ``edgemesh`` command line."""

from mesh.cli import main

raise SystemExit(main())
