"""What a run's tables become: findings, headline, cards, plots, Client-API helpers, rescoring."""
