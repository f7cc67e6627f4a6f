"""The bot's own HTTP servers and its Prometheus metrics."""
