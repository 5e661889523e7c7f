"""``serve(cfg)``: the port is taken before the model loads, and worker processes end with the server."""

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil

from dogbreed.cli import main

from ..conftest import free_port, wait_for_http
from .conftest import running_server
from .test_routes import call


def test_serve_on_a_port_in_use_is_one_line_before_the_model_loads(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tmp_path / "missing.tar.gz"), "--port", str(port)]) == 1
    assert capsys.readouterr().err.strip() == (f"error: port {port} on 127.0.0.1 is in use (another server?); pick another "
                                               f"--port, or --port 0 for any free one")


def test_port_0_picks_a_free_port_says_which_and_ping_answers_head(trained_run):
    proc = subprocess.Popen([sys.executable, "-m", "dogbreed", "serve", "--model", str(trained_run.artifact), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()  # the serving line comes once the model is loaded, before requests are taken
        match = re.search(r"on http://127\.0\.0\.1:(\d+) ", line)
        assert match and int(match[1]) > 0, line
        url = f"http://127.0.0.1:{match[1]}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(url + "/ping", method="HEAD"), timeout=2) as r:
                    assert r.status == 200 and r.read() == b""
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_workers_end_when_the_server_is_killed_outright_and_the_port_is_free_again(trained_run):
    port = free_port()
    parent = subprocess.Popen([sys.executable, "-m", "dogbreed", "serve", "--model", str(trained_run.artifact), "--port",
                               str(port), "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children = []
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", 180, proc=parent)
        children = psutil.Process(parent.pid).children(recursive=True)
        assert len(children) >= 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"server workers outlived the killed `dogbreed serve`: {[p.pid for p in alive]}"
        with running_server(trained_run.artifact, port=port) as url:  # the port is free again
            assert call(url, "/ping", method="GET")[0] == 200
    finally:  # only what this test started: the session's server is a child of this process too
        if parent.poll() is None:
            parent.kill()
        for p in children:
            if p.is_running():
                p.kill()
