"""The moderators' dashboard, driven in a real browser."""
