"""Where jobs and quotas are kept: the interface, SQLite, PostgreSQL, and the fleet of processes."""
