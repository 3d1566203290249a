"""Perplexity, downstream tasks (lm-eval), order preservation."""
