"""The HTTP layer: the base URL and key on every request, the API's error envelope turned into `ApiError`."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from client.config import Config, ConfigError, require_key
from client.errors import ApiError, ClientError

TIMEOUT = httpx.Timeout(30.0)
# Uploads are validated whole before the answer, and a merged download is built before its first byte.
LONG_TIMEOUT = httpx.Timeout(30.0, read=None, write=None)


class Api:
    """One connection pool to the API; every method raises `ClientError` instead of an httpx or HTTP error."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._http: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            try:
                key = require_key(self.config)
            except ConfigError as exc:
                raise ClientError(str(exc)) from None
            self._http = httpx.Client(base_url=self.config.base_url, timeout=TIMEOUT,
                                      headers={"Authorization": f"Bearer {key}", "User-Agent": "rlhf-cli"})
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.transport_errors():
            response = self.http.request(method, path, **kwargs)
        if response.is_error:
            raise self.error(response)
        return response

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs).json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response whose status is checked; transport errors stay httpx's, for callers that retry."""
        with self.http.stream(method, path, **kwargs) as response:
            if response.is_error:
                response.read()
                raise self.error(response)
            yield response

    @contextmanager
    def transport_errors(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException as exc:
            raise ClientError(f"{self.config.base_url} did not answer in time ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise ClientError(f"cannot reach the API at {self.config.base_url}: {exc or type(exc).__name__} "
                              "(is the service running? set RLHF_BASE_URL or --base-url)") from None

    def error(self, response: httpx.Response) -> ApiError:
        """The API's error envelope as one message that names the field at fault."""
        try:
            body = response.json()["error"]
            message, param, details = str(body.get("message") or ""), body.get("param"), body.get("details")
        except (ValueError, KeyError, TypeError, AttributeError):
            message, param, details = response.text.strip()[:300], None, None
        message = message or response.reason_phrase
        if param and not message.startswith(param):
            message = f"{param}: {message}"
        if response.status_code == 401:
            message += f" (the key came from {self.config.key_source})"
        return ApiError(message, status=response.status_code, param=param,
                        details=details if isinstance(details, list) else None)
