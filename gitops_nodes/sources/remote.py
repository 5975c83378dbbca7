"""Fetching a file from S3 (boto3: endpoint, region and credentials from the usual
environment variables, so MinIO and other S3-compatible stores work) or over HTTP(S).

Every download is bounded, so a source cannot hold validate, plan or a reconcile forever,
nor fill the disk: it must finish within DOWNLOAD_DEADLINE (30 minutes; over HTTP its
sockets are shut then, even mid-read, so a server dripping a byte at a time cannot stretch
it; an S3 download is checked as its data arrives, each read waiting at most READ_TIMEOUT)
and hold at most MAX_DOWNLOAD_BYTES (8 GiB); past either it fails naming the URL. Any one
HTTP read waits at most CONNECT_TIMEOUT for data.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import time
import urllib.error
import urllib.request
from typing import Any

from gitops_nodes.httpdeadline import Watchdog
from gitops_nodes.sources.cache import CHUNK, Cache, Entry
from gitops_nodes.sources.resolve import SourceError, human_size

CONNECT_TIMEOUT = 10.0  # seconds; over HTTP, also the longest wait for any one read
READ_TIMEOUT = 120.0
DOWNLOAD_DEADLINE = 30 * 60.0  # seconds for one download, from its request to its last byte
MAX_DOWNLOAD_BYTES = 8 * 2**30  # a model's weights, generously; more is a mistake or a stream


def fetch_url(url: str, sha256: str | None, cache: Cache) -> tuple[Entry, bool]:
    """The cache entry holding url's content, and whether it was downloaded now."""
    if url.startswith("s3://"):
        return _fetch_s3(url, sha256, cache)
    assert sha256 is not None  # the spec requires it for http(s)
    place = cache.blob(sha256)
    if place.exists():  # pinned: the digest names the content, nothing to ask anyone
        return Entry(place, sha256, place.stat().st_size), False
    request = urllib.request.Request(url, headers={"User-Agent": "gitops-nodes"})
    with Watchdog(DOWNLOAD_DEADLINE) as watchdog:
        opener = watchdog.opener()
        try:
            response = opener.open(request, timeout=CONNECT_TIMEOUT)
        except urllib.error.HTTPError as exc:
            what = {404: "not found", 401: "access denied", 403: "access denied"}.get(exc.code)
            raise SourceError(f"{url}: {what or 'refused'} (HTTP {exc.code})") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if watchdog.expired:
                raise SourceError(_too_slow(url)) from None
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            raise SourceError(f"{url}: unreachable ({reason})") from None
        with response:
            return _store(lambda out: _copy(response, out, url, watchdog), url, sha256, cache)


def _copy(response: http.client.HTTPResponse, out: Any, url: str, watchdog: Watchdog) -> None:
    """Write the response's body to out, no more than MAX_DOWNLOAD_BYTES of it."""
    announced = response.getheader("Content-Length", "")
    if announced.isdigit() and int(announced) > MAX_DOWNLOAD_BYTES:  # refused before a byte
        raise SourceError(_too_large(url))
    size = 0
    try:
        # read1: whatever one read of the socket brings, so the size is checked as it grows
        while chunk := response.read1(CHUNK):
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES:
                raise SourceError(_too_large(url))
            out.write(chunk)
    except (OSError, http.client.HTTPException) as exc:
        if watchdog.expired:
            raise SourceError(_too_slow(url)) from None
        raise SourceError(f"{url}: the download broke off ({type(exc).__name__}: {exc})") from None
    if watchdog.expired:  # the shut socket reads as the end of the body
        raise SourceError(_too_slow(url))
    if response.length:  # http.client counts down a Content-Length; an early end leaves some
        raise SourceError(
            f"{url}: the connection closed {human_size(response.length)} before the end"
        )


def _too_large(url: str) -> str:
    cap = MAX_DOWNLOAD_BYTES
    shown = f"{cap // 2**30} GiB" if cap % 2**30 == 0 else f"{cap / 2**20:g} MiB"
    return f"{url}: larger than {shown}, the most a source may be"


def _too_slow(url: str) -> str:
    return (
        f"{url}: not downloaded within {DOWNLOAD_DEADLINE:g} s, the most a source may take; "
        "is the server slow or sending without end?"
    )


def _store(write: Any, url: str, sha256: str | None, cache: Cache) -> tuple[Entry, bool]:
    """Download with write(file) into the cache's scratch, hash, verify, and add."""
    scratch = cache.scratch()
    try:
        path = scratch / "download"
        with path.open("wb") as out:
            write(out)
        digest = hashlib.sha256()
        size = 0
        with path.open("rb") as file:
            while chunk := file.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        found = digest.hexdigest()
        if sha256 is not None and found != sha256:
            raise SourceError(
                f"{url}: digest mismatch: expected sha256:{sha256}, got sha256:{found} "
                f"({human_size(size)}); nothing was built from it"
            )
        return cache.add_blob(path, found, size), True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _s3_client() -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"max_attempts": 2, "mode": "standard"},
    )
    return boto3.session.Session().client("s3", config=config)


def _fetch_s3(url: str, sha256: str | None, cache: Cache) -> tuple[Entry, bool]:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    bucket, _, key = url.removeprefix("s3://").partition("/")
    client = _s3_client()
    endpoint = client.meta.endpoint_url
    where = f"{url} (endpoint {endpoint})"
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except NoCredentialsError:
        raise SourceError(
            f"{where}: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) where gitops-nodes runs"
        ) from None
    except ClientError as exc:
        raise SourceError(f"{where}: {_s3_problem(exc)}") from None
    except BotoCoreError as exc:
        raise SourceError(f"{where}: unreachable ({exc})") from None
    identity = "\0".join(
        ["s3", endpoint, bucket, key, str(head.get("ETag")), str(head.get("VersionId")),
         str(head.get("ContentLength"))]
    )  # fmt: skip
    known = cache.lookup(identity)
    if known is not None and (sha256 is None or known.digest == sha256):
        return known, False
    length = head.get("ContentLength")
    if isinstance(length, int) and length > MAX_DOWNLOAD_BYTES:  # refused before a byte
        raise SourceError(_too_large(url))
    deadline = time.monotonic() + DOWNLOAD_DEADLINE
    received = 0

    def progress(count: int) -> None:
        # boto3 calls this as data arrives (from its worker threads); raising ends the
        # transfer. A stalled read is bounded by READ_TIMEOUT, not by this.
        nonlocal received
        received += count
        if received > MAX_DOWNLOAD_BYTES:  # the object grew since its head was read
            raise SourceError(_too_large(url))
        if time.monotonic() > deadline:
            raise SourceError(_too_slow(url))

    def download(out: Any) -> None:
        try:
            client.download_fileobj(bucket, key, out, Callback=progress)
        except ClientError as exc:
            raise SourceError(f"{where}: {_s3_problem(exc)}") from None
        except BotoCoreError as exc:
            raise SourceError(f"{where}: unreachable ({exc})") from None

    entry, fetched = _store(download, url, sha256, cache)
    cache.remember(identity, entry)
    return entry, fetched


def _s3_problem(exc: Any) -> str:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
        return "not found (no such bucket or key)"
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status in (
        401,
        403,
    ):
        return (
            f"access denied ({code or status}): check the credentials in the environment "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE)"
        )
    return f"{code or status}: {error.get('Message', '')}".strip()
