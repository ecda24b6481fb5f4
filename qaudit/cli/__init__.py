"""The command line: argparse, settings and their precedence, exit codes."""

from qaudit.cli.main import entry, main

__all__ = ["entry", "main"]
