import sys

from adamax.cli import main

sys.exit(main())
