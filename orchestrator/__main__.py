"""`python -m orchestrator` is `refitctl`."""

import sys

from orchestrator.cli import main

sys.exit(main())
