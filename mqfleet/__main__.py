from __future__ import annotations

import sys

from mqfleet.cli import main

sys.exit(main())
