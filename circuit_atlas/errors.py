"""The error base every user-facing failure derives from.

The CLI catches `CircuitAtlasError` and prints its message with a non-zero exit instead of a
traceback: a bad prompt, a transcoder that does not fit, a store that is down are the user's
to fix, and the message must say how. Programming errors still raise normally.
"""


class CircuitAtlasError(Exception):
    """A failure the user can act on; its message says what went wrong and where."""

    exit_code = 2
