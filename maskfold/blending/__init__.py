"""From probabilities to a submission: the blend recipe, its out-of-fold scoring and the rules."""
