"""One family for every error a user can cause (a bad prototxt, weights that do not fit, missing data, a run
folder that holds another run): each module's error class derives from :class:`ReproError`, so a tool catches
``(ReproError, OSError)`` and prints one line, while a bug anywhere else still shows its traceback.

``ReproError`` is a ``ValueError`` so that code written against the earlier per-module ``ValueError``
subclasses keeps working.
"""


class ReproError(ValueError):
    """A problem with the user's input or files, with a message that names the file, line, field or layer."""
