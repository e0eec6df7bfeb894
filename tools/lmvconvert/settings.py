"""The configuration schema of the .lmv meta keys and the layered Settings."""

import json
from collections import OrderedDict
from .base import ConvertError

# =============================================================================================
# 5. the configuration schema (README "Keys every file has" and the family keys)
# =============================================================================================
#
# type codes: s string, i int, i2 two ints, f float, fn float list, sl string list

COMMON_KEYS = OrderedDict([
    ("arch", "s"), ("name", "s"), ("source", "s"), ("in_chans", "i"), ("img_size", "i2"),
    ("num_classes", "i"), ("num_features", "i"), ("pre.resize", "i"), ("pre.crop", "i2"),
    ("pre.crop_pct", "f"), ("pre.interp", "s"), ("pre.mean", "fn"), ("pre.std", "fn"), ("labels", "sl"),
    ("convert.assumed", "sl"),
])
CHOICES = {
    "pre.interp": ("bilinear", "bicubic", "nearest"),
    "arch": (),   # the registered families (registry.register_family)
}
# family -> its meta keys (README names and type codes), filled by registry.register_family
FAMILY_KEYS = OrderedDict()


def coerce(key, value, schema=None):
    """Check and convert a user/config value for `key` to its meta type."""
    if schema is None:
        schema = OrderedDict(COMMON_KEYS)
        for keys in FAMILY_KEYS.values():
            schema.update(keys)
    if key not in schema:
        raise ConvertError("unknown setting %r (known: %s)" % (key, ", ".join(sorted(schema))))
    t = schema[key]
    try:
        if t == "s":
            if not isinstance(value, str):
                raise ValueError
            v = value
            if key in CHOICES and v not in CHOICES[key]:
                raise ConvertError("%s must be one of %s, not %r" % (key, "/".join(CHOICES[key]), v))
            return v
        if t == "i":
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, float) and value != int(value):
                raise ValueError
            return int(value)
        if t == "i2":
            if isinstance(value, (int, float, str)):
                value = [value]
            vals = [int(v) for v in value]
            if len(vals) == 1:
                vals = vals * 2
            if len(vals) != 2:
                raise ValueError
            return vals
        if t == "in":
            if isinstance(value, (int, float, str)):
                value = [value]
            return [int(v) for v in value]
        if t == "f":
            return float(value)
        if t == "fn":
            if isinstance(value, (int, float, str)):
                value = [value]
            return [float(v) for v in value]
        if t == "sl":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError
            return list(value)
    except (TypeError, ValueError):
        raise ConvertError("bad value %r for %s" % (value, key))
    raise ConvertError("bad schema type for %s" % key)


def parse_set_value(key, text):
    """--set KEY=VALUE: VALUE is JSON if it parses (numbers, lists), else a plain string."""
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if isinstance(value, str) and "," in value:
        value = [v.strip() for v in value.split(",")]
    return coerce(key, value)


class Settings(object):
    """Layered settings: source defaults < checkpoint side files (args, config.json) < mapping
    file < command line.  get() returns the top-most value; rank() says which layer set it."""

    LAYERS = ("default", "sidecar", "mapping", "cli")

    def __init__(self):
        self.layers = OrderedDict((n, OrderedDict()) for n in self.LAYERS)

    def set(self, layer, key, value):
        if value is not None:
            self.layers[layer][key] = value

    def update(self, layer, d):
        for k, v in d.items():
            self.set(layer, k, v)

    def get(self, key, default=None):
        for name in reversed(self.LAYERS):
            if key in self.layers[name]:
                return self.layers[name][key]
        return default

    def rank(self, key):
        for i, name in reversed(list(enumerate(self.LAYERS))):
            if key in self.layers[name]:
                return i
        return -1

    def explicit(self, key):
        """Set by something other than the source defaults."""
        return self.rank(key) > 0


