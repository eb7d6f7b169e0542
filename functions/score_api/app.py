"""HTTP scoring Lambda (API Gateway REST, proxy integration): POST /v1/scores, GET /v1/model,
GET /v1/health, and the real-time routes POST /v1/events, GET and DELETE /v1/customers/{user_id}.

Thin: Powertools parses and validates, ``churnguard.api`` and ``churnguard.realtime`` do the work,
this module shapes HTTP. Status codes: invalid JSON 400; schema violations (and events too far in the
future) 422 naming the field path; too many customers or events, or too large a body, 413 naming the
limit; unknown route 404; real-time routes without a state table 404 saying so; no loadable model 503;
a transient AWS error of the state store 503 with Retry-After (per customer in POST /v1/events: 202
listing them in ``retry``, 503 only when every customer failed so); any other fault 500 with the
correlation id (also in the log).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import json
import logging
import re
import time
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel

from churnguard.api import (
    CustomerOut,
    DuplicateCustomerError,
    EventsRequest,
    EventsResponse,
    ScoreRequest,
    ScoreResponse,
    TooManyCustomersError,
    customer_out,
    events_response,
    model_summary,
    path_user_id,
    score_request,
    state_events,
)
from churnguard.aws import TransientAwsError
from churnguard.customer_state import CustomerStateError
from churnguard.model_provider import ModelUnavailableError
from churnguard.promotions import SqsPromotionsPublisher  # noqa: F401 (tests patch its publish method)
from churnguard.realtime import FutureEventError, customer_view, erase, ingest, ingest_counts
from churnguard.validation import field_path
from churnguard.wiring import ApiRuntime, RealtimeRuntime, api_runtime

SERVICE = "churnguard-score-api"
logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
# Scoring as its own trace segment (features, model, reasons, promotions); domain code has no Powertools.
_score_request = tracer.capture_method(capture_response=False)(score_request)
_ingest = tracer.capture_method(capture_response=False)(ingest)
_customer_view = tracer.capture_method(capture_response=False)(customer_view)
_erase = tracer.capture_method(capture_response=False)(erase)
RETRY_AFTER_S = 2  # a transient state-store error: throttling or a blip, worth another try soon
NOT_CONFIGURED = "real-time mode is not configured (no state table: CHURNGUARD_STATE_TABLE is unset)"
metrics = Metrics(namespace="ChurnGuard", service=SERVICE)
app = APIGatewayRestResolver(enable_validation=True)


def _without_route_arguments(record: logging.LogRecord) -> bool:
    # Powertools logs "Calling API Route Handler: {route_args}" at DEBUG on every request; the
    # arguments are data (the user id of /v1/customers/{user_id}; bodies repr only their sizes).
    if isinstance(record.msg, str) and record.msg.startswith("Calling API Route Handler"):
        record.msg, record.args = "Calling API Route Handler", ()
    return True


logging.getLogger("aws_lambda_powertools.event_handler.api_gateway").addFilter(_without_route_arguments)


def _model_event(name: str, details: dict[str, Any]) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    logger.info(name, extra=details)


@functools.cache
def runtime() -> ApiRuntime:
    """Cold-start wiring (``churnguard.wiring``): settings validated once, adapters built once per
    container."""
    return api_runtime(on_model_event=_model_event)


def _json(status: int, body: dict[str, Any]) -> Response[str]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps(body))


def _model_json(status: int, model: BaseModel) -> Response[str]:
    """A response model serialised by pydantic-core in one step (not model_dump, then json.dumps).

    Only for models whose strings are ours or came through request validation: pydantic-core refuses
    a lone surrogate (which json.dumps escapes), and validation refuses it in request bodies."""
    return Response(
        status_code=status, content_type=content_types.APPLICATION_JSON, body=model.model_dump_json()
    )


def _field_path(loc: tuple[Any, ...]) -> str:
    return field_path(loc[1:] if loc and loc[0] == "body" else loc) or "body"


@app.exception_handler(RequestValidationError)
def _invalid_request(error: RequestValidationError) -> Response[str]:
    errors = error.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
        return _json(HTTPStatus.BAD_REQUEST, {"message": f"request body is not valid JSON: {detail}"})
    fields = [{"field": _field_path(tuple(e["loc"])), "message": e["msg"], "type": e["type"]} for e in errors]
    return _json(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        {"message": f"invalid request: {fields[0]['field']}: {fields[0]['message']}", "errors": fields},
    )


@app.exception_handler(ModelUnavailableError)
def _no_model(error: ModelUnavailableError) -> Response[str]:
    logger.error("no model available", extra={"error": str(error)})
    metrics.add_metric(name="ModelUnavailable", unit=MetricUnit.Count, value=1)
    return _json(
        HTTPStatus.SERVICE_UNAVAILABLE,
        {"message": "no model is available; retry later", "correlation_id": logger.get_correlation_id()},
    )


@app.exception_handler(TransientAwsError)
def _store_unavailable(error: TransientAwsError) -> Response[str]:
    logger.warning("state store unavailable", extra={"error": str(error)})  # operation and code only
    metrics.add_metric(name="StateStoreUnavailable", unit=MetricUnit.Count, value=1)
    response = _json(
        HTTPStatus.SERVICE_UNAVAILABLE, {"message": "the customer state store is busy; retry later"}
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


@app.exception_handler(Exception)
def _fault(error: Exception) -> Response[str]:
    if isinstance(error, ServiceError):  # Powertools' own HTTP errors (404 for unknown routes, ...)
        return _json(error.status_code, {"message": error.msg})
    logger.exception("unhandled error")
    return _json(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        {"message": "internal error", "correlation_id": logger.get_correlation_id()},
    )


# ROUTES_UNANNOTATED: the route functions carry no return annotation on purpose. Powertools publishes a
# route's return annotation as its response schema in openapi.json; these return a ready Response
# whose body is JSON text, which would be published as "type: string".
@app.post(
    "/v1/scores",
    summary="Score up to 100 customers",
    responses={
        200: {"description": "scores", "content": {"application/json": {"model": ScoreResponse}}},
        400: {"description": "body is not valid JSON"},
        413: {"description": "too many customers or body too large"},
        422: {"description": "schema violation; the message names the field"},
        503: {"description": "no model available"},
    },
)
def post_scores(request: ScoreRequest):  # type: ignore[no-untyped-def]  # see ROUTES_UNANNOTATED
    rt = runtime()
    limit = rt.settings.max_customers_per_request
    if len(request.customers) > limit:
        return _json(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            {
                "message": f"at most {limit} customers per request (got {len(request.customers)})",
                "limit": limit,
            },
        )
    started = time.perf_counter()
    bundle = rt.models.current()
    try:
        response = _score_request(
            request,
            bundle,
            now=dt.datetime.now(dt.UTC),
            policy=rt.policy,
            publisher=rt.publisher,
            top_k=rt.settings.reasons_top_k,
            decisions=rt.decisions,
        )
    except DuplicateCustomerError as exc:
        return _json(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            {"message": f"invalid request: {exc}", "errors": [{"field": exc.field, "message": str(exc)}]},
        )
    elapsed_ms = (time.perf_counter() - started) * 1000
    high = sum(c.risk_tier == "high" for c in response.customers)
    queued = sum(c.queued for c in response.customers)
    metrics.add_metric(name="CustomersScored", unit=MetricUnit.Count, value=len(response.customers))
    metrics.add_metric(name="HighRiskCustomers", unit=MetricUnit.Count, value=high)
    metrics.add_metric(name="PromotionsQueued", unit=MetricUnit.Count, value=queued)
    if rt.decisions is not None:
        held_out = sum(c.held_out for c in response.customers)
        metrics.add_metric(name="PromotionsHeldOut", unit=MetricUnit.Count, value=held_out)
    if response.decision_log_failures:
        metrics.add_metric(name="DecisionLogFailures", unit=MetricUnit.Count, value=1)
        logger.error("monitoring sample not logged")
    metrics.add_metric(name="ScoringLatency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    if response.promotion_failures:
        metrics.add_metric(name="PromotionFailures", unit=MetricUnit.Count, value=response.promotion_failures)
        logger.error("promotions not sent", extra={"failed": response.promotion_failures})
    # The request's record is its EMF line: the counts and latency above, and as metadata (searchable
    # in Logs Insights, not dimensions) the model and the request ids. A Logger line repeating them
    # measured 0.13 ms of a 1.2 ms warm request (issue 9's budget is 1.0 ms).
    metrics.add_metadata(key="model_version", value=response.model_version)
    metrics.add_metadata(key="function_request_id", value=app.lambda_context.aws_request_id)
    correlation_id = logger.get_correlation_id()
    if correlation_id is not None:
        metrics.add_metadata(key="correlation_id", value=correlation_id)
    return _model_json(HTTPStatus.OK, response)


@app.get("/v1/model", summary="The serving model: version, metrics, thresholds, features")
def get_model():  # type: ignore[no-untyped-def]  # see ROUTES_UNANNOTATED
    return _json(HTTPStatus.OK, model_summary(runtime().models.current()))


@app.get("/v1/health", summary="Liveness and the model version being served")
def get_health():  # type: ignore[no-untyped-def]  # see ROUTES_UNANNOTATED
    models = runtime().models
    try:
        version = models.current().version
    except ModelUnavailableError as exc:
        return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable", "reason": str(exc)})
    status = models.status()
    if status.state != "ok":  # still serving, but not the model the pointer names: say why
        return _json(HTTPStatus.OK, {"status": "degraded", "model_version": version, "reason": status.reason})
    return _json(HTTPStatus.OK, {"status": "ok", "model_version": version})


def _realtime(rt: ApiRuntime) -> RealtimeRuntime:
    if rt.realtime is None:
        raise NotFoundError(NOT_CONFIGURED)
    return rt.realtime


def _too_large(message: str, limit: int) -> Response[str]:
    return _json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"message": message, "limit": limit})


@app.post(
    "/v1/events",
    summary="Apply events to the customers' stored states; re-score them and fire warnings",
    responses={
        202: {"description": "per customer", "content": {"application/json": {"model": EventsResponse}}},
        400: {"description": "body is not valid JSON"},
        404: {"description": "real-time mode is not configured"},
        413: {"description": "too many events or customers, or body too large"},
        422: {"description": "schema violation or an event too far in the future; names the field"},
        503: {"description": "every customer failed for a transient reason (Retry-After), or no model"},
    },
)
def post_events(request: EventsRequest):  # type: ignore[no-untyped-def]  # see ROUTES_UNANNOTATED
    rt = runtime()
    realtime = _realtime(rt)
    limit = rt.settings.max_events_per_request
    if len(request.events) > limit:
        return _too_large(f"at most {limit} events per request (got {len(request.events)})", limit)
    try:
        pairs = state_events(request, rt.settings.max_customers_per_request)
    except TooManyCustomersError as exc:
        return _too_large(str(exc), exc.limit)
    bundle = rt.models.current()
    started = time.perf_counter()
    try:
        result = _ingest(
            pairs,
            store=realtime.store,
            bundle=bundle,
            policy=rt.policy,
            publisher=realtime.publisher,
            now=realtime.clock(),
            rules=realtime.rules,
        )
    except FutureEventError as exc:
        return _json(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            {"message": f"invalid request: {exc}", "errors": [{"field": exc.field, "message": str(exc)}]},
        )
    response = events_response(result, queue_configured=realtime.queue_configured)
    counts = ingest_counts(result, len(pairs), queue_configured=realtime.queue_configured)
    _events_metrics(response, counts, (time.perf_counter() - started) * 1000)
    if len(response.retry) == len(response.customers):  # nothing applied, all worth retrying
        unavailable = _json(HTTPStatus.SERVICE_UNAVAILABLE, response.model_dump())
        unavailable.headers["Retry-After"] = str(RETRY_AFTER_S)
        return unavailable
    return _json(HTTPStatus.ACCEPTED, response.model_dump())


def _events_metrics(response: EventsResponse, counts: dict[str, int], elapsed_ms: float) -> None:
    """Counts only: never a user id."""
    customers = response.customers
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    metrics.add_metric(name="IngestLatency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    if response.promotion_failures:
        metrics.add_metric(name="PromotionFailures", unit=MetricUnit.Count, value=response.promotion_failures)
        logger.error("warnings not sent", extra={"failed": response.promotion_failures})
    refused = sum(c.error is not None and c.error.kind == "refused" for c in customers)
    logger.info(
        "events applied",
        extra={
            **{k: v for k, v in counts.items() if k != "EventsReceived"},
            "events": counts["EventsReceived"],
            "customers": len(customers),
            "retry": len(response.retry),
            "refused": refused,
            "model_version": response.model_version,
            "ms": round(elapsed_ms, 2),
        },
    )


def _user_id_or_422(raw: str) -> str | Response[str]:
    try:
        return path_user_id(raw)
    except ValueError as exc:
        message = f"invalid request: user_id: {exc}"
        return _json(HTTPStatus.UNPROCESSABLE_ENTITY, {"message": message, "errors": [{"field": "user_id"}]})


@app.get(
    "/v1/customers/<user_id>",
    summary="A customer's current risk, scored now from the stored state",
    responses={
        200: {"description": "the customer", "content": {"application/json": {"model": CustomerOut}}},
        404: {"description": "no such customer, or real-time mode is not configured"},
        409: {"description": "the stored state cannot be scored by the serving model (the message says why)"},
        422: {"description": "user_id is blank or too long"},
        503: {"description": "the state store is busy (Retry-After), or no model"},
    },
)
def get_customer(user_id: str):  # type: ignore[no-untyped-def]  # see ROUTES_UNANNOTATED
    rt = runtime()
    realtime = _realtime(rt)
    key = _user_id_or_422(user_id)
    if isinstance(key, Response):
        return key
    try:
        view = _customer_view(
            realtime.store, rt.models.current(), key, realtime.clock(), top_k=rt.settings.reasons_top_k
        )
    except CustomerStateError as exc:  # e.g. a model that looks back further than the stored window
        return _json(HTTPStatus.CONFLICT, {"message": f"the stored state cannot be scored: {exc}"})
    if view is None:
        return _json(HTTPStatus.NOT_FOUND, {"message": "no such customer"})
    return _json(HTTPStatus.OK, customer_out(view).model_dump())


@app.delete(
    "/v1/customers/<user_id>",
    summary="Erase a customer's stored state (right to erasure); idempotent",
    responses={
        204: {"description": "erased (or there was nothing to erase); no body", "content": {}},
        404: {"description": "real-time mode is not configured"},
        422: {"description": "user_id is blank or too long"},
        503: {"description": "the state store is busy (Retry-After)"},
    },
)
def delete_customer(user_id: str):  # type: ignore[no-untyped-def]  # see ROUTES_UNANNOTATED
    realtime = _realtime(runtime())
    key = _user_id_or_422(user_id)
    if isinstance(key, Response):
        return key
    _erase(realtime.store, key)
    metrics.add_metric(name="CustomersErased", unit=MetricUnit.Count, value=1)
    return Response(status_code=HTTPStatus.NO_CONTENT, content_type=None, body=None)


def _raw_response(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """A proxy response for requests refused before routing (the resolver never sees them)."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": content_types.APPLICATION_JSON},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def _header(event: dict[str, Any], name: str) -> str | None:
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == name:
            return str(value)
    return None


@functools.cache
def _route_methods() -> list[tuple[re.Pattern[str], set[str]]]:
    """Route path pattern -> its methods, from the routes themselves (the OpenAPI document they
    generate); a ``{parameter}`` matches one path segment."""
    routes = []
    for path, ops in openapi_document()["paths"].items():
        pattern = re.sub(r"\\\{[^/]*?\\\}", "[^/]+", re.escape(path))
        routes.append((re.compile(f"^{pattern}$"), {m.upper() for m in ops}))
    return routes


def _allowed_methods(path: str) -> set[str] | None:
    return next((methods for pattern, methods in _route_methods() if pattern.match(path)), None)


_OVERLONG_NUMBER = re.compile(rb"[0-9]{4301}")  # sys.get_int_max_str_digits(): Python's default


def _precheck(event: dict[str, Any], limit: int) -> dict[str, Any] | None:
    """What the resolver would turn into a 500 or parse as something else: refused here with a 4xx."""
    if not isinstance(event.get("httpMethod"), str):  # e.g. an HTTP API (payload v2) event
        return _raw_response(
            HTTPStatus.BAD_REQUEST, {"message": "unsupported event: expected an API Gateway REST proxy event"}
        )
    allowed = _allowed_methods(event.get("path") or "")
    if allowed and event["httpMethod"].upper() not in allowed:
        response = _raw_response(
            HTTPStatus.METHOD_NOT_ALLOWED, {"message": f"use {', '.join(sorted(allowed))}"}
        )
        response["headers"]["Allow"] = ", ".join(sorted(allowed))
        return response
    body = event.get("body") or ""
    size = len(body) * 3 // 4 if event.get("isBase64Encoded") else len(body.encode("utf-8", "surrogatepass"))
    if size > limit:
        return _raw_response(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            {"message": f"request body is {size} bytes; the limit is {limit}", "limit": limit},
        )
    if not body:
        return None
    media_type = (_header(event, "content-type") or "application/json").split(";")[0].strip().lower()
    if media_type != "application/json":  # form or multipart bodies would be parsed as something else
        return _raw_response(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            {"message": "Content-Type must be application/json", "content_type": media_type[:100]},
        )
    try:
        raw = base64.b64decode(body, validate=True) if event.get("isBase64Encoded") else body.encode("utf-8")
        raw.decode("utf-8")
    except (binascii.Error, UnicodeError):
        return _raw_response(HTTPStatus.BAD_REQUEST, {"message": "request body is not UTF-8 encoded JSON"})
    if _OVERLONG_NUMBER.search(raw):  # json.loads would raise ValueError (int limit) inside Powertools
        return _raw_response(
            HTTPStatus.BAD_REQUEST, {"message": "request body has a number of more than 4,300 digits"}
        )
    return None


@app.exception_handler(RecursionError)
def _too_deep(_: RecursionError) -> Response[str]:
    return _json(HTTPStatus.BAD_REQUEST, {"message": "request body is nested too deeply"})


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    if rt.idempotency is not None:
        rt.idempotency.register_lambda_context(context)
    refused = _precheck(event, rt.settings.max_body_bytes)
    if refused is not None:
        return refused
    resolved: dict[str, Any] = app.resolve(event, context)  # Powertools types it as Any
    return resolved


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3 description generated from the real routes (committed as openapi.json)."""
    document: dict[str, Any] = json.loads(
        app.get_openapi_json_schema(title="ChurnGuard scoring API", version="1.0.0")
    )
    return document


__all__ = ["app", "lambda_handler", "openapi_document"]
