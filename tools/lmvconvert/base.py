"""Shared basics of the converter: where the tools live, the program name, ConvertError."""

import os
import reprlib
import sys

# the tools directory: lmvfile.py and imagenet_classes.txt sit there, beside this package
TOOLS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TOOLS_DIR not in sys.path:
    sys.path.insert(0, TOOLS_DIR)
import lmvfile  # noqa: E402,F401
PROG = "convert.py"


class ConvertError(Exception):
    """An expected failure (bad file, unknown layout, bad option): reported as one line, exit 1."""


def _short(obj):
    """A bounded repr of a pickled object for messages (a pickle can share objects so that a
    plain repr would be exponentially long)."""
    return _SHORT_REPR.repr(obj)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 3, 60, 60

