"""Open WebUI's own Jupyter client, fetched at run time, against a real service."""
