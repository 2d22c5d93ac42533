"""``python -m ceranubis_jupyter.cli``: the same as the ``ceranubis`` command."""

import sys

from .main import main

sys.exit(main())
