"""Server limits that need their own server settings: API key, queue bound, timeout, backends."""

import json
import threading

import pytest

from .conftest import running_server
from .test_routes import call, invoke


def test_api_key_guards_everything_but_ping_and_the_page(trained_run, samples):
    body = (samples / "Beagle_01125.jpg").read_bytes()
    with running_server(trained_run.artifact, "--api-key", "s3cret") as url:
        assert call(url, "/ping", method="GET")[0] == 200
        for page in ("/", "/docs", "/openapi.json"):  # static pages and the spec hold no secret
            assert call(url, page, method="GET")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, response_headers, out = invoke(url, body, **headers)
            assert status == 401 and "API key" in json.loads(out)["error"]
        assert call(url, "/metrics", method="GET")[0] == 401
        assert invoke(url, body, Authorization="Bearer s3cret")[0] == 200
        assert invoke(url, body, Authorization="bearer s3cret")[0] == 200  # the scheme is case-insensitive (RFC 7235)
        assert invoke(url, body, Authorization="Bearer s3cretX")[0] == 401
        # boto3 cannot send a bearer token; it signs with the key as its access key id
        import boto3

        sm = boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="s3cret", aws_secret_access_key="x")
        assert sm.invoke_endpoint(EndpointName="dogbreed", ContentType="image/jpeg", Body=body)["ResponseMetadata"]["HTTPStatusCode"] == 200
        bad = boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="other", aws_secret_access_key="x")
        with pytest.raises(Exception) as err:
            bad.invoke_endpoint(EndpointName="dogbreed", ContentType="image/jpeg", Body=body)
        assert err.value.response["Error"]["Code"] == "AccessDeniedException"


def test_a_full_queue_answers_503_with_retry_after_at_once(trained_run, samples):
    body = (samples / "Great_pyrenees_05367.jpg").read_bytes()
    statuses, retry_after = [], []
    with running_server(trained_run.artifact, "--queue-size", "1", "--max-instances", "1", "--max-batch-size", "1",
                        "--max-delay-ms", "0") as url:
        def one():
            status, headers, _ = invoke(url, body)
            statuses.append(status)
            if status == 503:
                retry_after.append(headers.get("retry-after"))

        threads = [threading.Thread(target=one) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert invoke(url, body)[0] == 200  # and it recovers
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses
    assert retry_after and set(retry_after) == {"1"}


def test_a_request_waiting_too_long_gets_504(trained_run, samples):
    with running_server(trained_run.artifact, "--timeout-s", "0.000001") as url:
        status, _, out = invoke(url, (samples / "Boxer_02426.jpg").read_bytes())
        assert status == 504 and "no answer within" in json.loads(out)["error"]
        assert call(url, "/ping", method="GET")[0] == 200
