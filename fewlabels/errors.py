"""User-facing errors.

Anything a user can cause (a missing folder, a bad config key, a checkpoint for other classes) raises
:class:`FewLabelsError` with a message that names the problem and the fix. The CLI prints the message
alone, without a traceback, and exits with status 2.
"""


class FewLabelsError(Exception):
    """An error caused by the user's input; its message says what is wrong and how to fix it."""
