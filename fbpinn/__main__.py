"""``python -m fbpinn``: the same as the ``fbpinn`` command."""

import sys

from .cli import main

sys.exit(main())
