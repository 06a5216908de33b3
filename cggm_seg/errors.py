"""The one exception type for mistakes a user can make (bad paths, files, settings).

It subclasses ``ValueError`` so code that runs outside the CLI (a MONAI bundle, a
notebook) still reads naturally; the CLI prints its message on one line and exits 2.
"""


class UserError(ValueError):
    """A problem the user can fix; the message names the file or setting and what was expected."""
