"""Reference Dramatiq worker."""
