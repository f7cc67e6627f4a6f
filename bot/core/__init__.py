"""The pure rules (model, quotas, scheduling, languages) and the job and credit services."""
