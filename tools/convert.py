#!/usr/bin/env python3
"""convert.py - turn a PyTorch / safetensors checkpoint into a lemevit.h `.lmv` weight file.

Python 3.8+ standard library only (numpy is used to go faster when it can be imported, never
required); torch is never imported.  See `convert.py --help` for the command line and the mapping
file format.  The converter itself is the package lmvconvert/ beside this file (its __init__.py
lists the modules); this file is its entry point and, for scripts that `import convert`, exposes
every name of those modules.
"""

import os
import sys

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:   # lmvconvert/ sits next to this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lmvconvert  # noqa: E402
from lmvconvert import (base, tensors, unpickle, reader, settings, registry, family, metadata,  # noqa: E402
                        mapping, pipeline, cli)
from lmvconvert.families import vit, swin, lemevit  # noqa: E402

for _mod in (base, tensors, unpickle, reader, settings, registry, family, metadata, mapping, vit, swin,
             lemevit, pipeline, cli):
    for _name, _value in vars(_mod).items():
        if not _name.startswith("__"):
            globals().setdefault(_name, _value)
del _mod, _name, _value

main = cli.main

if __name__ == "__main__":
    sys.exit(main())
