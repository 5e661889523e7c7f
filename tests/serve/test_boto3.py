"""boto3's real sagemaker-runtime client against the real server: SageMaker's Runtime API contract."""

import json

import boto3
import botocore
import pytest
from botocore.config import Config


def client(url, signed=True, key="dummy"):
    kwargs = dict(endpoint_url=url, region_name="us-east-1", config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    if signed:
        return boto3.client("sagemaker-runtime", aws_access_key_id=key, aws_secret_access_key="dummy", **kwargs)
    kwargs["config"] = kwargs["config"].merge(Config(signature_version=botocore.UNSIGNED))
    return boto3.client("sagemaker-runtime", **kwargs)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_invoke_endpoint_works_unchanged(server, samples, signed):
    response = client(server, signed).invoke_endpoint(
        EndpointName="dogbreed", ContentType="image/jpeg", Accept="application/json",
        Body=(samples / "German_shepherd_dog_04890.jpg").read_bytes())
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    assert response["ResponseMetadata"]["RequestId"]
    answer = json.loads(response["Body"].read())
    assert {"topk_labels", "topk_probs", "topk_indices"} <= set(answer)


def test_custom_attributes_travel_through_boto3(server, samples):
    response = client(server).invoke_endpoint(EndpointName="dogbreed", ContentType="image/jpeg",
                                              CustomAttributes="topk=1", Body=(samples / "Boxer_02426.jpg").read_bytes())
    assert len(json.loads(response["Body"].read())["topk_labels"]) == 1


def test_unknown_endpoint_raises_validation_error(server, samples):
    sm = client(server)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        sm.invoke_endpoint(EndpointName="nope", ContentType="image/jpeg", Body=b"x")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err.value.response["ResponseMetadata"]["RetryAttempts"] == 0


def test_a_rejected_image_raises_model_error_with_the_original_status(server):
    sm = client(server)
    with pytest.raises(sm.exceptions.ModelError) as err:
        sm.invoke_endpoint(EndpointName="dogbreed", ContentType="image/jpeg", Body=b"definitely not a jpeg")
    response = err.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 400 and "cannot decode" in response["OriginalMessage"]
    assert response["ResponseMetadata"]["RetryAttempts"] == 0  # a client error is never retried


def test_unsupported_type_is_a_model_error_too(server):
    sm = client(server)
    with pytest.raises(sm.exceptions.ModelError) as err:
        sm.invoke_endpoint(EndpointName="dogbreed", ContentType="text/csv", Body=b"1,2,3")
    assert err.value.response["OriginalStatusCode"] == 415
