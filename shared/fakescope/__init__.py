"""fakescope: tells AI-generated images from real ones, and says why."""

__version__ = "0.1.0"
