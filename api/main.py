"""The FastAPI app: ``uvicorn api.main:app``. Run ``python -m api.prestart`` first (migrations)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from api.routes import health, jobs, objects, webhooks

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def create_app() -> FastAPI:
    app = FastAPI(
        title="fakescope",
        version="0.1.0",
        description="Submit image batches, poll for status, read which images are AI-generated and why.",
    )
    app.include_router(health.router)
    app.include_router(jobs.router, prefix="/v1")
    app.include_router(webhooks.router, prefix="/v1")
    app.include_router(objects.router)
    return app


app = create_app()
