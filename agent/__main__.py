"""``python -m agent``: the same as the ``bt-agent`` command."""

import sys

from agent.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
