"""A worker that called end_with_parent ends when its parent is killed outright; a StopRequest
interrupts once, after the block it holds."""

import signal
import subprocess
import sys
import textwrap

import psutil

PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import os, sys, time; from dogbreed.lifetime import end_with_parent; end_with_parent(int(sys.argv[1])); "
        "print('armed', flush=True); time.sleep(120)", str(os.getpid())], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "armed"
    print(child.pid, flush=True)
    time.sleep(120)
""")


def test_a_worker_ends_with_its_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(parent.stdout.readline()))
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        gone, alive = psutil.wait_procs([child], timeout=20)
        assert not alive, "the worker outlived its killed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if child.is_running():
            child.kill()


HELD = textwrap.dedent("""
    import os, signal
    from dogbreed.lifetime import StopRequest
    with StopRequest(signal.SIGTERM) as stop:
        try:
            with stop.held():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)  # asked again: still one interrupt
                print("the held block finished", flush=True)
        except KeyboardInterrupt:
            print("interrupted after it", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        print("later requests are ignored", flush=True)
""")


def test_a_stop_request_waits_for_the_held_block_and_interrupts_once():
    done = subprocess.run([sys.executable, "-c", HELD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["the held block finished", "interrupted after it", "later requests are ignored"]


LOADER = textwrap.dedent("""
    import os, signal, torch
    from dogbreed.data.loaders import image_loader
    from dogbreed.lifetime import StopRequest

    class Asking:  # the stop request arrives while the loader's iterator is being made
        def __iter__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            return iter([[0], [1]])
        def __len__(self):
            return 2

    loader = image_loader([torch.zeros(2)] * 2, 1, shuffle=False, workers=1, device=torch.device("cpu"),
                          persistent=False, batches=Asking())
    with StopRequest(signal.SIGTERM):
        try:
            iterator = iter(loader)
            print("not interrupted", flush=True)
        except KeyboardInterrupt:
            print("interrupted once the iterator was whole", flush=True)
""")


def test_a_stop_request_never_cuts_a_loaders_new_iterator_in_two():
    """Interrupted while it started its workers, torch's half-made iterator printed a traceback when
    it was collected (what Ctrl-C of `tune` printed now and then)."""
    done = subprocess.run([sys.executable, "-c", LOADER], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["interrupted once the iterator was whole"]
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr


HANDOFF = textwrap.dedent("""
    import os, sys, threading
    from dogbreed.lifetime import loader_worker_init
    loader_worker_init(os.getppid())(0)  # what a loader worker runs first

    def hand_over(error):  # multiprocessing's resource_sharer reports a failed handoff so
        try:
            raise error
        except BaseException:
            sys.excepthook(*sys.exc_info())

    for error in (ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(32, "Broken pipe"),
                  ValueError("a real fault")):
        thread = threading.Thread(target=hand_over, args=(error,))
        thread.start()
        thread.join()
""")


def test_a_loader_worker_is_quiet_when_its_batchs_taker_left_mid_handoff():
    """Ctrl-C of ``tune`` may stop a trial while it takes a batch's tensors from a spawned loader
    worker: the worker's handoff then fails with the connection reset, which is the stop in order,
    not a fault to print. Any other error still prints."""
    out = subprocess.run([sys.executable, "-c", HANDOFF], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ValueError: a real fault" in out.stderr
    assert "ConnectionResetError" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
