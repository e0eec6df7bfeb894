"""The model families; importing this package registers them (registry.py), in detector order."""

from . import vit, clip, siglip, swin, lemevit, eva  # noqa: F401
