"""The one error type users see. The CLI prints its message on one line and exits with status 2."""


class LitFactoryError(Exception):
    """A problem the user can fix: the message names the file, the field and the fix."""
