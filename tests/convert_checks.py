"""expect / expect_error, the assertions of the converter's test scripts (test_convert.py,
test_mapping.py): a check's body raises AssertionError with a sentence when something is off."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import convert  # noqa: E402


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def expect_error(fn, *words):
    """Call fn; it must raise convert.ConvertError whose message contains each of `words`
    (case-insensitive).  Returns the message."""
    try:
        fn()
    except convert.ConvertError as e:
        msg = str(e)
        for w in words:
            expect(w.lower() in msg.lower(), "error %r does not mention %r" % (msg, w))
        return msg
    raise AssertionError("no error raised")
