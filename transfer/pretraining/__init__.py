"""Self-supervised pretraining: contrastive (SimCLR) for images, masked
language modelling for text, and the probes that measure representations."""
