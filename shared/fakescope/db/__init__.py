"""Database tables, engine and migrations of the job service."""
