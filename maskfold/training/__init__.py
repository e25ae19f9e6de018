"""Training one fold: train.py's options, the data and its augmentation, the loop, optimizers, checkpoints
and the logs."""
