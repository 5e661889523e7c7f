"""What a trained model needs at inference time, and nothing else.

The modules in this package import only torch, torchvision, numpy and Pillow (never the rest of
dogbreed), because every artifact ships them verbatim in its ``code/`` folder: SageMaker's PyTorch
container, ``dogbreed predict`` and ``dogbreed serve`` all run this exact code.
"""
