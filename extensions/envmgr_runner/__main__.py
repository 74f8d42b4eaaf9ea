"""`python -m envmgr_runner <job folder>`: exit 0 succeeded, 1 the notebook failed, 2 the
runner itself could not run it (infrastructure)."""

import os
import sys

from envmgr_runner.runner import main

code = main(sys.argv[1:])
# Everything is written (atomically) and the kernel is shut down: skip the interpreter's
# finalization of a few hundred modules, a third of a second that only delays the result.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
