"""``python -m taskqueue_app.worker --url URL [--token T] [--limit N] dotted.path ...``."""

import sys

from .cli import main

sys.exit(main())
