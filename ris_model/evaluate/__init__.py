"""Evaluation of a trained model against the classical baselines, and the report's plots."""
