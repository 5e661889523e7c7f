"""What a trained model needs at inference time, and nothing else.

    inference.py  SageMaker's four handlers, each a step of the pipeline
    pipeline.py   the one inference path: content type -> images -> probabilities -> answers -> JSON
    loading.py    an unpacked artifact (model.json, labels.json, weights) -> LoadedModel
    network.py    the backbone registry and the network builder
    fusion.py     the frozen network made fast for the CPU (BatchNorms folded, convolutions fused)
    presets.py    image decoding and the train/eval transforms

These modules import only torch, torchvision, numpy and Pillow (never the rest of dogbreed),
because every artifact ships them verbatim in its ``code/`` folder: SageMaker's PyTorch container,
``dogbreed predict`` and ``dogbreed serve`` all run this exact code.
"""
