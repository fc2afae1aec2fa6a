"""The command line: ``bt-agent run|validate|split|status|plan``."""

from agent.cli.app import main

__all__ = ["main"]
