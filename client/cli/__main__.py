"""`python -m gradserve.client.cli`: the `gradserve` command without its console script."""

import sys

from gradserve.client.cli.main import main

sys.exit(main())
