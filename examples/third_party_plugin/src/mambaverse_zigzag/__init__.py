"""Example third-party mambaverse plugin (see plugin.py for the hooks)."""
