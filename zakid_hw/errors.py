"""The one exception type for user mistakes.

Everything a user can get wrong (a bad file, an unsupported op, a model that does not fit) raises
:class:`ZakidError` with a one-paragraph message naming the node, op, tensor or limit at fault. The CLI
prints the message and exits with status 2; it never shows a traceback for these.
"""


class ZakidError(Exception):
    """A user-facing error: the message names what is at fault and what to do."""

    exit_code = 2
