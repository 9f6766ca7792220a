"""The one error type users see, and how the CLI shows it: one line on stderr, exit status 2."""

import sys


class LitFactoryError(Exception):
    """A problem the user can fix: the message names the file, the field and the fix."""


def fail(message: str) -> int:
    """Print a one-line error for the user and return the CLI's error status."""
    print(f"lit-factory: error: {' '.join(message.split())}", file=sys.stderr)
    return 2
