"""Two hosts on one machine: network namespaces joined by a veth pair (iproute2, root only).

Each namespace has its own network stack and address, so processes started in them reach each other
only over the link between them, as two machines on one network do; they share the file system,
which stands in for the shared folder a several-machine job needs anyway.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Host:
    namespace: str
    interface: str
    address: str

    def command(self, argv: list[str], env: dict[str, str]) -> list[str]:
        """``argv`` run inside this host: the caller's environment plus ``env``."""
        return ["ip", "netns", "exec", self.namespace, "env", *(f"{k}={v}" for k, v in env.items()), *argv]


def unavailable() -> str | None:
    """Why two hosts cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2's ip is not installed"
    probe = f"dbprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


@contextlib.contextmanager
def two_hosts(subnet: str = "10.213.77"):
    """Two hosts, ``SUBNET.1`` and ``SUBNET.2``, on a link of their own; removed on exit."""
    tag = uuid.uuid4().hex[:6]
    hosts = [Host(f"dogbreed-{tag}-{i}", f"db{tag}{i}", f"{subnet}.{i + 1}") for i in range(2)]
    ip = lambda *args: subprocess.run(["ip", *args], check=True, capture_output=True, text=True)  # noqa: E731
    try:
        for host in hosts:
            ip("netns", "add", host.namespace)
        ip("link", "add", hosts[0].interface, "type", "veth", "peer", "name", hosts[1].interface)
        for host in hosts:
            ip("link", "set", host.interface, "netns", host.namespace)
            ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.interface)
            ip("-n", host.namespace, "link", "set", host.interface, "up")
            ip("-n", host.namespace, "link", "set", "lo", "up")
        yield hosts
    finally:
        for host in hosts:  # deleting a namespace removes its end of the link, and so the pair
            subprocess.run(["ip", "netns", "delete", host.namespace], capture_output=True)
