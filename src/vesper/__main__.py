import sys

from vesper.cli.main import main

sys.exit(main())
