"""Drives the retake HTTP API through a client generated from its own OpenAPI document (package
`retake_api_client`, on PYTHONPATH): start a retry, wait until it finishes, read its history.
Prints one JSON object for the Rust test (tests/integration/openapi.rs) to check.

Usage: openapi_client.py BASE_URL CREATOR_TOKEN VIEWER_TOKEN SEGMENT REQUEST_JSON
"""

import json
import sys
import time

from retake_api_client import AuthenticatedClient
from retake_api_client.api.retries import retry_history, retry_status, start_retry
from retake_api_client.models import HistoryPage, RetryRequest, RetryStarted, Status

base, creator, viewer, segment, request = sys.argv[1:6]

with AuthenticatedClient(base_url=base, token=creator, raise_on_unexpected_status=True) as c:
    started = start_retry.sync_detailed(
        id=segment, client=c, body=RetryRequest.from_dict(json.loads(request))
    )
if not isinstance(started.parsed, RetryStarted):
    sys.exit(f"start answered {started.status_code}: {started.content!r}")

with AuthenticatedClient(base_url=base, token=viewer, raise_on_unexpected_status=True) as v:
    deadline = time.monotonic() + 60
    while True:
        status = retry_status.sync(id=segment, client=v)
        if isinstance(status, Status) and status.phase.value == "finished":
            break
        if time.monotonic() > deadline:
            sys.exit(f"the retry never finished; last status: {status}")
        time.sleep(0.2)
    page = retry_history.sync(id=segment, client=v, page=1, per_page=500)
if not isinstance(page, HistoryPage):
    sys.exit(f"history answered {page}")

print(
    json.dumps(
        {
            "start_status": int(started.status_code),
            "started": started.parsed.to_dict(),
            "status": status.to_dict(),
            "history": page.to_dict(),
        }
    )
)
