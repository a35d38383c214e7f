"""Heads on backbones: classifiers, multi-label and regression heads, text
classifiers, and freezing (`set_trainable_blocks`)."""
