"""`python -m perceiver_keras.cli ...`: the `perceiver-keras` command."""

import sys

from perceiver_keras.cli import main

sys.exit(main())
