"""
The admin listener: C{/metrics} (SPEC section 5), open unless metrics tokens
are configured, then for a metrics or admin token.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from klein import Klein
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from refresherd.auth import ADMIN, METRICS, Authorizer
from refresherd.errors import NotFound, RefresherdError, Unauthorized
from refresherd.metrics import Metrics


@attrs.define(slots=False)
class AdminAPI:
    authorizer: Authorizer
    metrics: Metrics
    app = Klein()

    def resource(self) -> Any:
        return self.app.resource()

    @app.handle_errors(RefresherdError, HTTPException)
    def _error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        if not isinstance(error, RefresherdError):
            error = NotFound(f"no route {request.path.decode('latin-1')!r}")
        request.setResponseCode(error.status)
        request.setHeader(b"Content-Type", b"application/json")
        if isinstance(error, Unauthorized):
            request.setHeader(b"WWW-Authenticate", b"Bearer")
        return json.dumps(error.to_json()).encode("utf-8")

    @app.route("/metrics", methods=["GET"])
    def metrics_text(self, request: IRequest) -> bytes:
        if self.authorizer.configured([METRICS]):
            self.authorizer.require(
                request.getHeader(b"Authorization"), frozenset({METRICS, ADMIN})
            )
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return self.metrics.render()
