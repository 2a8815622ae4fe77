"""The job report page: ``/report/{job_id}``, for the people who look at what fakescope found.

The page itself holds no data, so serving it needs no key. Its script (``/report/assets/report.js``:
the page runs no inline script) reads a report link's read-only token (``#token=...``, made by
``POST /v1/jobs/{id}/report-link``: this job's GET routes only, until it expires) or a tenant's API key
(``#key=...``) from the URL fragment, which browsers never send to a server and servers never log, or
asks for a key; keeps it in the tab's sessionStorage, and calls the same ``/v1`` routes as any client
(``X-Report-Token`` or ``X-API-Key``): another tenant's key gets the API's 404 and the page shows nothing. It polls the
job every two seconds until it is finished, showing state and progress, a grid of images with verdict,
probability and GradCAM overlay, each fake's artifacts and reasons, filters (all, fakes, errors) and
the task files.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, Response

router = APIRouter(tags=["report"])

STATIC = Path(__file__).resolve().parents[1] / "static"
PAGE = (STATIC / "report.html").read_text()
SCRIPT = (STATIC / "report.js").read_text()
# No inline script, no framing, no sniffing, no referrer: the page shows user images and a token.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src * data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@router.get("/report/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def report_page(job_id: uuid.UUID) -> HTMLResponse:
    """The page shell; the job id is a UUID, so inserting it into the page cannot inject markup."""
    return HTMLResponse(PAGE.replace("__JOB__", str(job_id)), headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


@router.get("/report/assets/report.js", include_in_schema=False)
def report_script() -> Response:
    return Response(
        SCRIPT, media_type="text/javascript", headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=300"}
    )
