import sys

from shapecalc.cli import main

sys.exit(main())
