import sys

from mexit.cli import main

sys.exit(main())
