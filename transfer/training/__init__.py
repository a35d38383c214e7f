"""Training: `Stage`/`Recipe` (plain data), `fit_recipe` and its stage loop,
the run directory, resume, checkpoints, the feature cache and distribution."""
