"""The frozen-backbone embedding cache."""

import copy
import json

import pytest
import torch

from dogbreed import config
from dogbreed.artifact import load_artifact
from dogbreed.features import CHUNKS, Chunks, feature_extractor
from dogbreed.logs import setup_logging
from dogbreed.model import build_model
from dogbreed.predict import predict_files
from dogbreed.run import train
from dogbreed.runtime.backends import MIN_PASSES, WARM_UPS
from dogbreed.runtime.network import set_head
from dogbreed.runtime.pipeline import Options

from .conftest import TINY, cache_use


def test_second_run_reuses_the_embedding_cache(synth_data, tiny_weights, tmp_path, capsys):
    overrides = {**TINY, "data": str(synth_data), "weights": str(tiny_weights), "out": str(tmp_path), "epochs": 1,
                 "aug_views": 1, "cache_dir": str(tmp_path / "cache")}
    setup_logging()
    first = train(config.resolve(overrides=overrides), progress=False)
    assert cache_use(first.run_dir) == {"hits": 0, "computed": 3, "ranks": 1}
    assert "0 hit(s), 3 computed" in capsys.readouterr().out  # the one test of the console line
    again = train(config.resolve(overrides={**overrides, "lr": 0.01, "batch_size": 4}), progress=False)
    assert cache_use(again.run_dir) == {"hits": 3, "computed": 0, "ranks": 1}  # trials that change the head reuse it
    resized = train(config.resolve(overrides={**overrides, "image_size": 48}), progress=False)
    assert cache_use(resized.run_dir) == {"hits": 0, "computed": 3, "ranks": 1}  # a new transform is a new entry


def test_embeddings_from_each_backend_train_heads_whose_test_predictions_agree(synth_data, tiny_weights, tmp_path):
    """fp32 both ways: PyTorch's and ONNX Runtime's embeddings train the same head, up to rounding."""
    base = {**TINY, "data": str(synth_data), "weights": str(tiny_weights), "epochs": 2, "aug_views": 1, "amp": "off"}
    runs = {}
    for backend in ("eager", "onnx"):
        cfg = config.resolve(overrides={**base, "embed_backend": backend, "out": str(tmp_path / backend),
                                        "cache_dir": str(tmp_path / backend / "cache")})
        runs[backend] = train(cfg, progress=False)
        chosen = json.loads((runs[backend].run_dir / "results.json").read_text())["feature_cache"]["backend"]
        assert chosen["asked"] == chosen["chosen"] == backend
    photos = sorted((synth_data / "test").glob("*/*.jpg"))
    answers = {name: [a for _, a in predict_files(load_artifact(run.artifact), photos, Options(topk=2))]
               for name, run in runs.items()}
    for eager, onnx in zip(answers["eager"], answers["onnx"]):
        assert eager["topk_labels"] == onnx["topk_labels"]
        assert eager["topk_probs"] == pytest.approx(onnx["topk_probs"], abs=1e-3)


def test_auto_embeds_a_small_job_on_eager_without_exporting(synth_data, tiny_weights, tmp_path):
    cfg = config.resolve(overrides={**TINY, "data": str(synth_data), "weights": str(tiny_weights), "epochs": 1,
                                    "aug_views": 1, "out": str(tmp_path), "cache_dir": str(tmp_path / "cache")})
    stats = json.loads((train(cfg, progress=False).run_dir / "results.json").read_text())["feature_cache"]
    assert stats["backend"]["asked"] == "auto" and stats["backend"]["chosen"] == "eager"
    assert "too few to pay for an ONNX export" in stats["backend"]["why"] and "eager" in stats["backend"]["measured"]
    assert not (tmp_path / "cache" / "onnx").exists()


def test_chunk_sizes_are_timed_on_the_work_itself_without_running_any_image_twice():
    seen = []

    def run(images):
        seen.append(len(images))
        return images.flatten(1).sum(dim=1, keepdim=True)

    chunks = Chunks(run, batch_size=64)
    batches = [torch.randn(n, 1, 2, 2) for n in (64, 64, 64, 64, 30)]
    outputs = [chunks(batch) for batch in batches]

    for batch, out in zip(batches, outputs):  # every image's own result, in order
        assert torch.allclose(out, batch.flatten(1).sum(dim=1, keepdim=True))
    assert sum(seen) == sum(len(b) for b in batches)  # each image ran once
    assert chunks.done and set(chunks.rates()) == set(CHUNKS) and chunks.size in CHUNKS
    passes = WARM_UPS + MIN_PASSES
    assert seen[:passes * len(CHUNKS)] == [size for size in CHUNKS for _ in range(passes)]  # each size on real images

    def split(n, size):
        return [size] * (n // size) + ([n % size] if n % size else [])

    planned = passes * sum(CHUNKS)  # then the fastest for the rest of the fourth batch and the fifth
    assert seen[passes * len(CHUNKS):] == split(4 * 64 - planned, chunks.size) + split(30, chunks.size)


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_v2_s"])
def test_the_extractor_folds_every_batchnorm_and_embeds_what_the_network_computes(backbone):
    """Folded into their convolutions, the BatchNorms leave the extractor, which still outputs the
    head's input as the network in eval mode computes it; the model itself is left untouched."""
    torch.manual_seed(0)
    model, _ = build_model(backbone, 5, pretrained=False)
    for module in model.modules():  # statistics other than the initial ones, so that folding them shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    extractor = feature_extractor(model, backbone)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in extractor.modules())
    assert not any(p.requires_grad for p in extractor.parameters())

    unfolded = copy.deepcopy(model).eval()
    set_head(unfolded, backbone, torch.nn.Identity())
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected, got = unfolded(images), extractor(images)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_on_a_cpu_the_embedding_decodes_on_the_cpus_torchs_threads_leave_free(tmp_path):
    """Worker processes beside torch's threads only take turns with them (``FeatureCache._decoders``);
    ``--workers`` and a GPU keep theirs."""
    from dogbreed.features import FeatureCache
    from dogbreed.machine import available_cpus

    model, _ = build_model("resnet18", 3, pretrained=False)

    def cache(workers, device="cpu"):
        made = FeatureCache(tmp_path, feature_extractor(model, "resnet18"), device=torch.device("cpu"), amp_dtype=None,
                            batch_size=8, workers=workers, progress=False)
        made.device = torch.device(device)  # as a GPU's cache would be, where none is
        return made

    assert cache(None)._decoders() == max(available_cpus() - torch.get_num_threads(), 0)
    assert cache(3)._decoders() == 3
    assert cache(None, "cuda")._decoders() is None  # the loader's own default: every CPU


@pytest.mark.parametrize("workers", [None, 0])
def test_the_embedding_tells_the_monitor_when_it_decodes_in_process_by_design(synth_data, tmp_path, monkeypatch,
                                                                             workers):
    """What keeps the Dataloader rule quiet on the default CPU embedding (``features.IN_PROCESS``):
    said only when the cache chose no workers, never for a ``--workers 0`` the user asked for."""
    from dogbreed.data.layout import scan
    from dogbreed.features import IN_PROCESS, FeatureCache
    from dogbreed.hooks import NoHooks
    from dogbreed.runtime.presets import EvalPreset

    described = []

    class Recorder(NoHooks):
        def describe_loader(self, phase, loader, in_process=None):
            described.append((phase, loader.num_workers, in_process))

    monkeypatch.setattr(torch, "get_num_threads", lambda: 10_000)  # torch's threads take every CPU
    model, _ = build_model("resnet18", 3, pretrained=False)
    samples = scan(synth_data).splits["valid"][:4]
    made = FeatureCache(tmp_path, feature_extractor(model, "resnet18"), device=torch.device("cpu"), amp_dtype=None,
                        batch_size=8, workers=workers, progress=False, hooks=Recorder(), backend="eager")
    made.get(samples, EvalPreset(crop_size=64, resize_size=72), "eval64", view=None, desc="embedding valid")
    assert described == [("embed", 0, IN_PROCESS if workers is None else None)]
