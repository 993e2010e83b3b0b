"""Suite-wide settings. Hypothesis's per-example deadline (200 ms) is a timed assertion: a busy 2-core CI machine
or a file system hiccup fails a correct test (test_clock once took 264 ms). Speed belongs in bench/."""

import urllib.request
from collections.abc import Iterator

import pytest
from hypothesis import settings

settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")

BUCKET = "flywheel"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with dummy credentials and its endpoint in the environment, as a stage
    pod gets them (resources.storage.secretRef / endpointUrl); yields the bucket's URI. Stage processes the
    test starts inherit the environment."""
    from flywheel_operator import storage
    from moto.server import ThreadedMotoServer
    from s3fs import S3FileSystem

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its state per process: forget what an earlier test module's server held
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")).close()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL_S3", f"http://{host}:{port}")
        env.delenv("AWS_PROFILE", raising=False)
        env.setenv(storage.CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        S3FileSystem.clear_instance_cache()
        S3FileSystem(endpoint_url=f"http://{host}:{port}").mkdir(BUCKET)
        yield f"s3://{BUCKET}"
        S3FileSystem.clear_instance_cache()
    server.stop()
