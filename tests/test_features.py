"""The frozen-backbone embedding cache."""

from dogbreed import config
from dogbreed.logs import setup_logging
from dogbreed.run import train

from .conftest import TINY


def test_second_run_reuses_the_embedding_cache(synth_data, tiny_weights, tmp_path, capsys):
    overrides = {**TINY, "data": str(synth_data), "weights": str(tiny_weights), "out": str(tmp_path), "epochs": 1,
                 "aug_views": 1, "cache_dir": str(tmp_path / "cache")}
    setup_logging()
    train(config.resolve(overrides=overrides), progress=False)
    assert "0 hit(s), 3 computed" in capsys.readouterr().out
    train(config.resolve(overrides={**overrides, "lr": 0.01, "batch_size": 4}), progress=False)
    assert "3 hit(s), 0 computed" in capsys.readouterr().out  # trials that change the head reuse it
    train(config.resolve(overrides={**overrides, "image_size": 48}), progress=False)
    assert "0 hit(s), 3 computed" in capsys.readouterr().out  # a new transform is a new entry
