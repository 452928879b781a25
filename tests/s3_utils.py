"""A local S3 server for tests: moto's, on loopback, reached through the standard env vars."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def moto_s3() -> Iterator[tuple[str, object]]:
    """Start moto's S3 server on 127.0.0.1 and point ``AWS_*`` at it for the block.

    Yields ``(endpoint, boto3 client)``; skips the test where moto, boto3 or s3fs
    is not installed.
    """
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    s3fs = pytest.importorskip("s3fs")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            for key, value in {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ENDPOINT_URL_S3": endpoint,
            }.items():
                mp.setenv(key, value)
            # fsspec caches filesystems by arguments, not by endpoint: drop other tests'
            s3fs.S3FileSystem.clear_instance_cache()
            yield endpoint, boto3.client("s3", endpoint_url=endpoint)
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()
