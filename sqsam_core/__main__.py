"""`python -m sqsam_core` runs the sqsam command line."""

import sys

from sqsam_core.cli import main

sys.exit(main())
