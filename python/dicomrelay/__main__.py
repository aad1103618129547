"""``python -m dicomrelay`` runs the command line."""

import sys

from dicomrelay.cli import main

sys.exit(main())
