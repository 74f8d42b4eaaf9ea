"""`python -m envmgr_runner <job folder>`: exit 0 succeeded, 1 the notebook failed, 2 the
runner itself could not run it (infrastructure)."""

import sys

from envmgr_runner.runner import main

sys.exit(main(sys.argv[1:]))
