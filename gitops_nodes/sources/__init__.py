"""Model sources: files and models a python node's image is built with, fetched on the host.

`resolve.py` turns a spec's source (s3://, https:// with a sha256, an MLflow registry model)
into a file or folder in the content-addressed cache (`cache.py`), verified, with what it
resolved to for plans; `remote.py` fetches over S3 and HTTP, `registry.py` from MLflow.
boto3 and mlflow are imported only when a source needs them. Every message that leaves this
package has the environment's credentials blanked out (`redact`).
"""
