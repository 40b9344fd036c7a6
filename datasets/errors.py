"""The one error type of `datasets`: bad config, bad files, bad layout.

A `ValueError` subclass so callers that already catch config errors catch these too; the message is
one line and names the dotted config key or the offending file.
"""


class DatasetError(ValueError):
    """Bad dataset config, layout or file; the message names the key or file."""
