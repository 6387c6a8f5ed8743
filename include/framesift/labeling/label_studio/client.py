"""HTTP to Label Studio with ``requests``: its auth, retries on 429/5xx, framesift's
error types.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import requests

from framesift.labeling.base import BackendError, BackendUnavailable, BadCredentials

log = logging.getLogger("framesift.labeling.label_studio")


class LabelStudioClient:
    """``requests`` with Label Studio's auth and framesift's error types."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float | tuple[float, float] = (5.0, 120.0),
        max_429_retries: int = 3,
        max_retry_after_s: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ):
        self.url = url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.max_429_retries = max_429_retries
        self.max_retry_after_s = max_retry_after_s
        self.sleep = sleep
        self.session = session or requests.Session()
        self._jwt = token.count(".") == 2  # a personal access token (JWT refresh token)
        self._access: str | None = None

    def __repr__(self) -> str:  # never show the token
        return f"LabelStudioClient(url={self.url!r})"

    def _auth_header(self, refresh: bool = False) -> dict[str, str]:
        if not self._jwt:
            return {"Authorization": f"Token {self._token}"}
        if self._access is None or refresh:
            resp = self._send("POST", "/api/token/refresh/", {"json": {"refresh": self._token}}, {})
            if resp.status_code in (400, 401, 403):
                raise BadCredentials(
                    f"Label Studio at {self.url} refused the personal access token (HTTP {resp.status_code}); "
                    "check the token in the labeling connection"
                )
            self._raise_for(resp, "POST /api/token/refresh/")
            self._access = resp.json()["access"]
        return {"Authorization": f"Bearer {self._access}"}

    def _send(self, method: str, path: str, kwargs: dict[str, Any], headers: dict[str, str]):
        try:
            return self.session.request(
                method, self.url + path, headers=headers, timeout=self.timeout, **kwargs
            )
        except requests.Timeout as exc:
            raise BackendUnavailable(f"Label Studio at {self.url} timed out on {method} {path}") from exc
        except requests.ConnectionError as exc:
            raise BackendUnavailable(
                f"cannot reach Label Studio at {self.url} ({type(exc).__name__} on {method} {path})"
            ) from exc

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send; return the response for 2xx (and 404, for the caller to judge)."""
        attempts_429 = 0
        refreshed = False
        while True:
            resp = self._send(method, path, kwargs, self._auth_header())
            if resp.status_code == 401 and self._jwt and not refreshed:
                self._auth_header(refresh=True)  # the access token may have expired
                refreshed = True
                continue
            if resp.status_code == 429:
                retry_after = _retry_after(resp)
                wait = (
                    retry_after if retry_after is not None else min(2.0**attempts_429, self.max_retry_after_s)
                )
                if attempts_429 >= self.max_429_retries or wait > self.max_retry_after_s:
                    raise BackendUnavailable(
                        f"Label Studio at {self.url} is rate limiting (HTTP 429 on {method} {path})"
                        + (f"; retry after {retry_after:g} s" if retry_after is not None else ""),
                        retry_after=retry_after,
                        status=429,
                    )
                attempts_429 += 1
                log.info("Label Studio rate limit on %s %s: waiting %.1f s (Retry-After)", method, path, wait)
                self.sleep(wait)
                continue
            if resp.status_code == 404:
                return resp
            self._raise_for(resp, f"{method} {path}")
            return resp

    def _raise_for(self, resp: requests.Response, what: str) -> None:
        code = resp.status_code
        if code < 400:
            return
        if code in (401, 403):
            raise BadCredentials(
                f"Label Studio at {self.url} refused the API token (HTTP {code} on {what}); check the token "
                "in the labeling connection (a legacy token also needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true "
                "on the server)"
            )
        if code >= 500:
            raise BackendUnavailable(
                f"Label Studio at {self.url} failed with HTTP {code} on {what}", status=code
            )
        raise BackendError(f"Label Studio refused {what} (HTTP {code}): {brief(resp)}", status=code)

    def get_json(self, path: str, **kwargs: Any) -> Any:
        resp = self.request("GET", path, **kwargs)
        if resp.status_code == 404:
            return None
        return resp.json()


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def brief(resp: requests.Response, limit: int = 500) -> str:
    text = resp.text or ""
    return text[:limit] + ("..." if len(text) > limit else "")
