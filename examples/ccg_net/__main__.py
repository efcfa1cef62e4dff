import sys

from examples.ccg_net.cli import main

sys.exit(main())
