"""Python client for the clsloc HTTP service."""
