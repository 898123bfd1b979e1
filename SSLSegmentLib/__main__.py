"""``python -m SSLSegmentLib ...`` is the same as the ``sslsegment`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
