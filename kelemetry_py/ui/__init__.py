"""The built-in web UI served at ``/``: static files in ``static/`` and the small JSON API they read."""
