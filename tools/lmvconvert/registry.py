"""The one registry of model families.

A family module (families/xxx.py) registers itself:

    register_family("xxx", XXX_KEYS, choices={"xxx.key": ("a", "b")},
                    assumable=[("xxx.eps", "--set xxx.eps=E")])

    @builder("xxx")
    def build_xxx(sd, ctx, source, defaults, name_hint=None):
        ...

    @detector("xxx", "Official XXX")
    def detect_xxx(sd, ctx):
        ...

- the meta keys (README names and type codes, see settings.py) are the graph options the
  family's .lmv files carry; `choices` are the allowed values of its string keys;
- the builder takes a state dict already in the family's canonical names (used by mapping
  files): fn(state_dict, ctx, source, defaults, name_hint=None) -> Model;
- a detector returns None when the state dict is not its layout, else a Model (family.py);
  detectors are tried in the order they were registered (families/__init__.py imports the
  family modules in that order).
"""

from collections import OrderedDict

from .settings import CHOICES, FAMILY_KEYS


class Family(object):
    def __init__(self, name, keys, assumable):
        self.name, self.keys, self.builder = name, keys, None
        self.assumable = assumable   # meta key -> the flag that sets it (pipeline.assumed_keys)
        self.detectors = []        # (label, fn) in registration order


FAMILIES = OrderedDict()           # name -> Family
DETECTORS = []                     # (family name, label, fn), tried in this order
MAPPING_BUILDERS = OrderedDict()   # family name -> builder from canonical names


def register_family(name, keys, choices=None, assumable=None):
    """`assumable`: the family's options that the tensors cannot show, each with the flag that
    sets it; when neither the checkpoint's metadata nor the user states one, the summary and
    convert.assumed say it was assumed."""
    if name in FAMILIES:
        raise ValueError("family %r registered twice" % name)
    FAMILIES[name] = Family(name, keys, OrderedDict(assumable or ()))
    FAMILY_KEYS[name] = keys
    CHOICES["arch"] = tuple(FAMILIES)
    for k, v in (choices or {}).items():
        CHOICES[k] = tuple(v)
    return FAMILIES[name]


def builder(family):
    """Decorator: register the builder from canonical names of `family` (used by mapping files)."""
    def wrap(fn):
        FAMILIES[family].builder = fn
        MAPPING_BUILDERS[family] = fn
        return fn
    return wrap


def detector(family, label):
    """Decorator: register fn(sd, ctx) -> Model or None as a detector of `family`."""
    def wrap(fn):
        FAMILIES[family].detectors.append((label, fn))
        DETECTORS.append((family, label, fn))
        return fn
    return wrap
