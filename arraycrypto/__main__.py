"""``python -m arraycrypto``: the same as the ``arraycrypto`` command."""

from .cli import main

raise SystemExit(main())
