"""Runnable examples: router.py, backend.py (also ``examples.backend:app``), user.py, demo.py."""
