"""``python -m klpcore``."""

import sys

from .cli import main

sys.exit(main())
