"""``python -m streamlstm.cli``: the same as the ``streamlstm`` command."""

import sys

from . import main

sys.exit(main())
