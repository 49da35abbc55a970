"""``python -m klpcore.cli`` (as ``python -m klpcore``)."""

import sys

from .entry import main

sys.exit(main())
