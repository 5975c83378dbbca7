"""Fetching a file from S3 (boto3: endpoint, region and credentials from the usual
environment variables, so MinIO and other S3-compatible stores work) or over HTTP(S)."""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from typing import Any

from gitops_nodes.sources.cache import CHUNK, Cache, Entry
from gitops_nodes.sources.resolve import SourceError, human_size

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0


def fetch_url(url: str, sha256: str | None, cache: Cache) -> tuple[Entry, bool]:
    """The cache entry holding url's content, and whether it was downloaded now."""
    if url.startswith("s3://"):
        return _fetch_s3(url, sha256, cache)
    assert sha256 is not None  # the spec requires it for http(s)
    place = cache.blob(sha256)
    if place.exists():  # pinned: the digest names the content, nothing to ask anyone
        return Entry(place, sha256, place.stat().st_size), False
    request = urllib.request.Request(url, headers={"User-Agent": "gitops-nodes"})
    try:
        response = urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT)
    except urllib.error.HTTPError as exc:
        what = {404: "not found", 401: "access denied", 403: "access denied"}.get(exc.code, "")
        raise SourceError(f"{url}: {what or 'refused'} (HTTP {exc.code})") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"{url}: unreachable ({reason})") from None
    with response:
        return _store(lambda out: shutil.copyfileobj(response, out, CHUNK), url, sha256, cache)


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

    def download(out: Any) -> None:
        try:
            client.download_fileobj(bucket, key, out)
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
