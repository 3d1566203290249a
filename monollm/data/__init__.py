"""Documents, splits and packed blocks; the built-in corpus."""
