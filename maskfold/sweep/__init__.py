"""A team\x27s sweep on Optuna: the search space, the study in its storage, and its table."""
