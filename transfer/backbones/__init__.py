"""Pretrained backbones: specs, the registry, and the families registered.

Importing this package registers every family below; adding a family is one
module here with `register_backbone(...)` calls, imported in this file.
"""

from transfer.backbones import applications  # noqa: F401
from transfer.backbones import efficientnet_lite  # noqa: F401
from transfer.backbones import small  # noqa: F401
from transfer.backbones import text  # noqa: F401
from transfer.backbones import vision_transformers  # noqa: F401
