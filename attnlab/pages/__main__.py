"""``python -m attnlab.pages [--check]``."""
import sys

from attnlab.pages import main

sys.exit(main())
