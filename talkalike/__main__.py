"""`python -m talkalike` is the `talkalike` command."""

import sys

from talkalike.cli import main

sys.exit(main())
