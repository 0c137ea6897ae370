"""Evaluation: one tool-accuracy scorer for the eval stage, checkpoint evals and the training hook;
generation, knowledge bits, lm-eval and linear probes."""
