"""Celery worker pools of the job service: thin tasks over ``fakescope.service.processing``."""
