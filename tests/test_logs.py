"""The terminal's output: information on stdout, warnings and errors on stderr, prefixed."""

import logging

from dogbreed.logs import quieted, setup_logging


def test_info_goes_to_stdout_and_warnings_to_stderr(capsys):
    setup_logging()
    logging.getLogger("dogbreed.x").info("epoch 1 done")
    logging.getLogger("dogbreed.x").warning("rule fired")
    out, err = capsys.readouterr()
    assert out == "epoch 1 done\n" and err == "warning: rule fired\n"


def test_quieted_restores_each_level(capsys):
    setup_logging()
    logging.getLogger("dogbreed.y").setLevel(logging.DEBUG)
    with quieted(["dogbreed.y"]):
        logging.getLogger("dogbreed.y").info("hidden")
    logging.getLogger("dogbreed.y").info("shown")
    assert capsys.readouterr().out == "shown\n" and logging.getLogger("dogbreed.y").level == logging.DEBUG
