"""The one exception type for mistakes a user can make (bad paths, files, settings).

The CLI prints its message on one line and exits with status 2 instead of a traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message names the file or setting and what was expected."""
