"""Every error the gateway raises on purpose, in one tree.

    KaltstartError
    ├── ConfigError                 bad settings, config file or annotation (start-up / discovery, not a request)
    ├── BackendError                the replica backend failed (process would not start, API call failed)
    │   └── UnknownModel            the backend serves no such model (it left the catalog meanwhile)
    └── RequestError                a request's own outcome; knows its HTTP status and OpenAI error type
        ├── InvalidRequest          malformed JSON, wrong fields, bad values              -> 400
        │   └── Unsupported         a feature of the OpenAI API this gateway does not honour -> 400
        ├── ModelNotFound           the model is not configured                           -> 404
        ├── BodyTimeout             the body did not arrive within its timeout            -> 408
        ├── PayloadTooLarge         body over the limit                                   -> 413
        ├── QueueFull               too many requests (or bytes) queued for the model     -> 429 + Retry-After
        ├── KeyQuotaExceeded        the API key has too much in flight or queued          -> 429 + Retry-After
        ├── ColdStartTimeout        no replica became ready within the cold-start timeout -> 503 + Retry-After
        ├── ServiceUnavailable      Redis or the backend is down                          -> 503 + Retry-After
        │   ├── QueueUnavailable    Redis could not be reached or answered with an error  -> 503 + Retry-After
        │   │   └── NotReplicated   an enqueue not copied to enough replicas in time (withdrawn) -> 503 + Retry-After
        │   └── QueueMemoryFull     Redis is near its maxmemory: no new work (settles go on) -> 503 + Retry-After
        ├── GenerationFailed        the runtime failed the request, retries exhausted     -> 502
        ├── DeadlineExceeded        not finished within the request timeout               -> 504
        └── ClientGone              the client closed its connection first (nginx's 499; only counted)

Third-party exceptions (redis, httpx, kubernetes-asyncio) are converted where they enter our code, so route
code only ever sees this tree. 5xx messages are written for clients and carry no internals; logs carry those.
"""

from __future__ import annotations


class KaltstartError(Exception):
    """Base of every error raised on purpose by the gateway."""


class ConfigError(KaltstartError):
    """Settings, a config file or an annotation that cannot be used. ``key`` names the offending setting."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class BackendError(KaltstartError):
    """The replica backend could not do what it was asked."""


class UnknownModel(BackendError):
    """The backend serves no model of this name (every backend raises this alike)."""


class RequestError(KaltstartError):
    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequest(RequestError):
    status_code = 400
    error_type = "invalid_request_error"


class Unsupported(InvalidRequest):
    """A request asks for a feature this gateway does not honour (an image input, tools, structured output): the
    message names the feature, ``param`` where it is."""

    code = "unsupported_parameter"


class ModelNotFound(RequestError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class BodyTimeout(RequestError):
    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(RequestError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class QueueFull(RequestError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"


class KeyQuotaExceeded(RequestError):
    """One API key's requests in flight, entries or bytes queued reached its quota (``gateway.queue.budget``)."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "key_quota_exceeded"

    def __init__(self, message: str, *, quota: str, retry_after_s: int) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        #: Which quota: ``requests``, ``entries`` or ``bytes`` (a metric label).
        self.quota = quota


class ColdStartTimeout(RequestError):
    status_code = 503
    error_type = "server_error"
    code = "cold_start_timeout"


class ServiceUnavailable(RequestError):
    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"


class QueueUnavailable(ServiceUnavailable):
    """Redis could not be reached or answered with an error."""

    def __init__(self, message: str = "The request queue is unavailable; try again shortly.") -> None:
        super().__init__(message, retry_after_s=2)


class NotReplicated(QueueUnavailable):
    """``KALTSTART_REDIS_WAIT_REPLICAS``: the enqueue reached fewer replicas than asked within the wait's timeout,
    so a failover could lose it; the request is withdrawn (cancelled) and refused. ``entry_ids``: its entries, for
    the withdrawal."""

    code = "queue_not_replicated"

    def __init__(self, entry_ids: tuple[str, ...]) -> None:
        super().__init__("The request could not be stored safely (the queue's replicas are behind); try again shortly.")
        self.entry_ids = entry_ids


class QueueMemoryFull(ServiceUnavailable):
    """Redis is above its memory high-water mark: new requests are refused so that settles keep their room."""

    code = "queue_memory_full"


class GenerationFailed(RequestError):
    status_code = 502
    error_type = "server_error"
    code = "generation_failed"


class DeadlineExceeded(RequestError):
    status_code = 504
    error_type = "server_error"
    code = "timeout"


class ClientGone(RequestError):
    """The client closed its connection before its answer: nobody reads the response; the status is what the
    metrics count (nginx's "client closed request")."""

    status_code = 499
    error_type = "client_closed_request"
    code = "client_closed_request"

    def __init__(self) -> None:
        super().__init__("The client closed the connection.")
