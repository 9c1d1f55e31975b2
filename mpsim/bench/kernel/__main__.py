"""``python -m mpsim.bench.kernel ...``: the same as ``mpsim bench kernel ...``."""

import sys

from mpsim.bench.kernel import main

sys.exit(main())
