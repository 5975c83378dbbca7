"""Servers the model sources' tests fetch from, started on loopback and stopped by the tests:
an S3 server (moto's server mode, with credentials checked), an MLflow tracking server with a
local backend store and artifact root, and a plain HTTP server that counts its requests."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.waiting import wait_until

from .helpers import free_port

MODEL_CODE = Path(__file__).with_name("sources") / "model_code.py"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    bucket: str

    def env(self, secret: str | None = None) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": secret or self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def put(self, key: str, body: bytes) -> None:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )
        client.put_object(Bucket=self.bucket, Key=key, Body=body)


def _process_log(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@contextmanager
def s3_server(tmp: Path) -> Iterator[S3Server]:
    """moto in server mode; after its first five requests (a user, its key and policy, a
    bucket, made here) every request must carry that user's valid credentials."""
    import boto3

    port = free_port()
    log = tmp / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _listening(port), "moto server", 60, 0.1)
        boot = {
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "boot",
            "aws_secret_access_key": "boot",
        }
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="deployer")
        key = iam.create_access_key(UserName="deployer")["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="deployer", PolicyName="s3", PolicyDocument=json.dumps(policy))
        boto3.client("s3", **boot).create_bucket(Bucket="models")
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], "models")
    finally:
        process.terminate()
        process.wait(timeout=20)


def _listening(port: int) -> bool:
    """Whether the port accepts connections (no request: moto counts requests)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


class _Counting(http.server.SimpleHTTPRequestHandler):
    counts: dict[str, int]

    def do_GET(self) -> None:
        self.counts[self.path] = self.counts.get(self.path, 0) + 1
        super().do_GET()

    def log_message(self, *_: object) -> None:
        pass


@dataclass
class FileServer:
    url: str
    folder: Path
    counts: dict[str, int]


@contextmanager
def file_server(folder: Path) -> Iterator[FileServer]:
    """A plain HTTP server of folder's files on loopback, counting the GETs of each path."""
    counts: dict[str, int] = {}
    handler = type("Handler", (_Counting,), {"counts": counts})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FileServer(f"http://127.0.0.1:{server.server_address[1]}", folder, counts)
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Registry:
    uri: str
    model: str

    def move_alias(self, alias: str, version: int) -> None:
        from mlflow import MlflowClient

        MlflowClient(self.uri).set_registered_model_alias(self.model, alias, str(version))


def mlflow_command() -> list[str]:
    """The tracking server: GITOPS_NODES_MLFLOW, else the venv that scripts/test makes, else
    mlflow on PATH."""
    explicit = os.environ.get("GITOPS_NODES_MLFLOW")
    if explicit:
        return [explicit]
    for venv in (Path("/opt/gitops-nodes-test"), Path.home() / ".cache" / "gitops-nodes-test"):
        if (venv / "mlflow" / "bin" / "mlflow").exists():  # scripts/lib/ensure-mlflow-server.sh
            return [str(venv / "mlflow" / "bin" / "mlflow")]
    return [shutil.which("mlflow") or "mlflow"]


@contextmanager
def mlflow_server(tmp: Path, model: str = "scale") -> Iterator[Registry]:
    """`mlflow server` with a local store and artifact root; the model `model` registered in
    two versions (factor 2, then 3) and the alias champion on version 1."""
    import mlflow

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = tmp / "mlflow.log"
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    command = [
        *mlflow_command(), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", (tmp / "store").as_uri(),
        "--artifacts-destination", str(tmp / "artifacts"),
    ]  # fmt: skip
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: process.poll() is not None or _answers(uri + "/health"),
            "mlflow server",
            180,
            0.2,
        )
        assert process.poll() is None, _process_log(log)
        mlflow.set_tracking_uri(uri)
        for factor in (2, 3):
            artifact = tmp / f"v{factor}" / "factor.txt"  # artifacts/factor.txt in the model
            artifact.parent.mkdir()
            artifact.write_text(str(factor))
            with mlflow.start_run():
                mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(MODEL_CODE),
                    artifacts={"factor": str(artifact)},
                    registered_model_name=model,
                    pip_requirements=[f"mlflow-skinny=={mlflow.__version__}"],
                )
        registry = Registry(uri, model)
        registry.move_alias("champion", 1)
        yield registry
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
