"""Text classification with `transfer`: a public namespace.

The code lives in `transfer.models.text` (classifiers),
`transfer.data.text` (folders, CSV files, built-in texts) and
`transfer.pretraining.masked_lm` (masked-language-model pretraining).
"""

from transfer.data.text import load_text_csv
from transfer.data.text import load_text_dataset
from transfer.data.text import load_text_folder
from transfer.models.text import build_text_backbone
from transfer.models.text import build_text_classifier
from transfer.models.text import check_text_inputs
from transfer.models.text import texts_dataset
from transfer.pretraining.masked_lm import pretrain_masked_lm

__all__ = [
    "build_text_backbone",
    "build_text_classifier",
    "check_text_inputs",
    "load_text_csv",
    "load_text_dataset",
    "load_text_folder",
    "pretrain_masked_lm",
    "texts_dataset",
]
