"""HTTP API of the job service (FastAPI). Imports no ML code and nothing from ``workers/``."""
