"""The job report page: ``/report/{job_id}``, for the people who look at what fakescope found.

The page itself holds no data, so serving it needs no key. Its script reads the API key from the URL
fragment (``#key=...``, which browsers never send to a server and servers never log) or asks for it,
keeps it in the tab's sessionStorage, and calls the same ``/v1`` routes as any client with the
``X-API-Key`` header: another tenant's key gets the API's 404 and the page shows nothing. It polls the
job every two seconds until it is finished, showing state and progress, a grid of images with verdict,
probability and GradCAM overlay, each fake's artifacts and reasons, filters (all, fakes, errors) and
the task files.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["report"])

PAGE = (Path(__file__).resolve().parents[1] / "static" / "report.html").read_text()


@router.get("/report/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def report_page(job_id: uuid.UUID) -> HTMLResponse:
    """The page shell; the job id is a UUID, so inserting it into the page cannot inject markup."""
    return HTMLResponse(
        PAGE.replace("__JOB__", str(job_id)),
        headers={
            "Content-Security-Policy": (
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "img-src * data: blob:; connect-src 'self'"
            ),
            "Cache-Control": "no-store",
        },
    )
