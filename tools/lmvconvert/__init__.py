"""lmvconvert - the checkpoint converter behind tools/convert.py (Python 3.8+ standard library only;
numpy is used to go faster when it can be imported, never required; torch is never imported).

  base.py       shared basics: ConvertError, the tools directory, lmvfile
  tensors.py    dtypes, a lazily materialised Tensor, float32 conversion
  unpickle.py   safe unpickling: a restricted pickle.Unpickler that only builds local stubs
  reader.py     checkpoint readers (torch zip, torch legacy, plain pickle, safetensors) and finding
                the weights (wrapper dicts, EMA copies, pickled nn.Modules, key prefixes)
  settings.py   the schema of the .lmv meta keys and the layered Settings
  registry.py   the registry of families: meta keys, detectors, builder for mapping files
  family.py     Model, Context and what the family modules share
  families/     one module per family: vit.py (timm / DeiT / torchvision / Hugging Face),
                swin.py (Microsoft / timm / torchvision / Hugging Face), lemevit.py (official)
  metadata.py   what the checkpoint says about itself: model name, model kwargs, data config
  mapping.py    mapping files for users' own module names
  pipeline.py   detection, tensor accounting, assumed options, preprocessing, labels, summary,
                convert()
  cli.py        the command line
"""

from . import families  # noqa: F401  (registers the families)
