import sys

from lit_factory.cli import main

sys.exit(main())
