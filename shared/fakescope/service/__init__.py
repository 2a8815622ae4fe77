"""What the job service does, as functions: the API routes and the Celery tasks are thin callers.

``tenants`` and ``jobs`` import no ML code and serve the API; ``processing`` runs the detection
pipeline and is imported by the workers only.
"""
