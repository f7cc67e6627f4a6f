"""The moderators' web dashboard (the `web` extra): Discord login, a server's usage, quotas and reviews."""
