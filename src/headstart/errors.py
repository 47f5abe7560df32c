"""The one exception type users see: the CLI prints its message as a single line and exits 1."""


class HeadstartError(Exception):
    """A user-facing error: bad input, bad config, or a file that is not what it should be.

    The message names the input and what was expected; no traceback is shown for it.
    """


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a run after it saved what it could; the message says how to go on.

    A KeyboardInterrupt, so whatever wraps the run (a study, the CLI) stops too instead of
    recording a half-trained result as finished.
    """
