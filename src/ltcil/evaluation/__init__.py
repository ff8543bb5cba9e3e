"""Evaluation: metrics over predictions and the per-task evaluator."""
