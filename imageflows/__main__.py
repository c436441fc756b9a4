"""`python -m imageflows` runs the command line (see `imageflows.cli`)."""

import sys

from imageflows.cli import main

sys.exit(main())
