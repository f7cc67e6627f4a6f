"""Pictures and videos: first frames, clips (PyAV) and capped downloads."""
