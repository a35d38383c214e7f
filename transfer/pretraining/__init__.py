"""Self-supervised pretraining: contrastive (SimCLR) and masked image
modelling (MAE, vision transformers) for images, masked language modelling
for text, and the probes that measure representations."""
