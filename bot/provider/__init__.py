"""The Kling API: its client, a local simulator of it, and its callbacks."""
