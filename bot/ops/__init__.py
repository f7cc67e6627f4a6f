"""The operator's tools beside the bot: the preflight check."""
