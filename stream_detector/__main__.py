"""Allow ``python -m stream_detector``."""

import sys

from stream_detector.cli import main

sys.exit(main())
