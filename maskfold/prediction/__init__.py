"""Predicting eval photos with trained checkpoints, and the test-time views."""
