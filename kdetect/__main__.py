import sys

from kdetect.cli import main

sys.exit(main())
