"""``dogbreed serve``: SageMaker's endpoint contract on one machine (FastAPI + uvicorn)."""

BACKENDS = ("eager", "torchscript", "onnx")
