"""Pooled keep-alive HTTP to a time-series engine, with its failures mapped onto ours.

A refused connection, a timeout, a reset, a 5xx or a 429 raise StoreUnavailable (the API answers
503 with Retry-After): the engine's answer is unknown or "later", so nothing may be reported
stored. Other 4xx answers are returned to the backend, which knows what they mean.
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from ..errors import StoreUnavailable

log = logging.getLogger("monapi.tsdb.http")
DEFAULT_RETRY_AFTER = 5


class EngineResponse:
    """Status, headers and the whole body of an engine's answer."""

    __slots__ = ("data", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], data: bytes) -> None:
        self.status = status
        self.headers = headers
        self.data = data

    def text(self, limit: int = 500) -> str:
        return self.data[:limit].decode("utf-8", "replace").strip()


class EngineHTTP:
    """One engine's HTTP endpoint: a pool of keep-alive connections shared by the threads of a
    worker process."""

    def __init__(
        self,
        name: str,
        base_url: str,
        timeout_s: float,
        pool_size: int,
        headers: Mapping[str, str] | None = None,
        compression: str = "auto",
    ) -> None:
        """``compression``: gzip request bodies sent with ``compress=True`` ("gzip"), never
        ("none"), or unless the engine is on a loopback address ("auto")."""
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.gzip = compression == "gzip" or (
            compression == "auto" and not is_loopback(self.base_url)
        )
        self.timeout = urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s)
        self.headers = dict(headers or {})
        self.pool = urllib3.PoolManager(
            num_pools=4, maxsize=pool_size, block=False, timeout=self.timeout, retries=False
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        compress: bool = False,
        idempotent: bool = True,
    ) -> EngineResponse:
        """Send a request; StoreUnavailable unless the engine gave a definite non-5xx answer.

        ``idempotent`` requests are sent again once if a pooled connection turns out to be
        closed before an answer came (the engine's keep-alive timeout); others only when the
        connection could not be made at all.
        """
        url = self.base_url + path
        if params:
            url += "?" + urlencode(params)
        hdrs = {**self.headers, **(headers or {})}
        if compress and body and self.gzip:
            body = gzip.compress(body, compresslevel=1)
            hdrs["Content-Encoding"] = "gzip"
        retries = urllib3.Retry(
            total=2,
            connect=2,
            read=1 if idempotent else 0,
            status=0,
            other=0,
            allowed_methods=None,
            raise_on_status=False,
            backoff_factor=0,
        )
        try:
            resp = self.pool.request(
                method,
                url,
                body=body,
                headers=hdrs,
                retries=retries,
                preload_content=True,
                redirect=False,
            )
        except Urllib3Error as exc:
            reason = getattr(exc, "reason", None) or exc
            raise StoreUnavailable(
                f"{self.name} at {self.base_url} did not answer: {_short(reason)}",
                retry_after=DEFAULT_RETRY_AFTER,
            ) from exc
        out = EngineResponse(resp.status, resp.headers, resp.data or b"")
        if resp.status >= 500 or resp.status == 429:
            raise StoreUnavailable(
                f"{self.name} answered {resp.status}: {out.text(300)}",
                retry_after=_retry_after(resp.headers.get("Retry-After")),
            )
        return out

    def close(self) -> None:
        self.pool.clear()


def is_loopback(url: str) -> bool:
    """Whether a URL's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retry_after(value: str | None) -> int:
    if value and value.strip().isdigit():
        return max(1, min(int(value.strip()), 3600))
    return DEFAULT_RETRY_AFTER


def _short(reason: object) -> str:
    text = str(reason)
    # urllib3 repeats the connection object in its messages; keep the part that says why.
    if ": " in text and "object at 0x" in text:
        text = text.rsplit(": ", 1)[-1]
    return text[:300]
