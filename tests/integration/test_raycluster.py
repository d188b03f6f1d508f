"""The private local cluster listens on loopback only (Ray's default is every interface)."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


def _external_ip() -> str | None:
    """This machine's non-loopback address, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks a route
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def _kernel_address(word_hex: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words, each in host (little-endian) order."""
    raw = bytes.fromhex(word_hex)
    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(packed)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 (a dual-stack socket) is 127.0.0.1
    return address


def _listening_addresses(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The local addresses of TCP sockets listening on `port`, from /proc/net/tcp{,6}: what a
    socket is bound to, whatever addresses the host has."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(_kernel_address(address))
    return found


@pytest.fixture(scope="module")
def gcs_port() -> Iterator[int]:
    """A private local cluster; the port its GCS listens on."""
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=1)
    try:
        info = ray._private.worker.global_worker.node.address_info
        host, port = info["gcs_address"].rsplit(":", 1)
        assert host == "127.0.0.1" and info["node_ip_address"] == "127.0.0.1"
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
        yield int(port)
    finally:
        ray.shutdown()


def test_the_gcs_socket_is_bound_to_loopback(gcs_port: int) -> None:
    with socket.create_connection(("127.0.0.1", gcs_port), timeout=5):
        pass  # reachable from this machine
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp on this OS to read the socket's bound address from")
    bound = _listening_addresses(gcs_port)
    assert bound, f"nothing listens on port {gcs_port}"
    assert all(a.is_loopback for a in bound), bound  # 0.0.0.0 or :: would be every interface


def test_the_gcs_refuses_connections_to_the_external_address(gcs_port: int) -> None:
    external = _external_ip()
    if external is None:
        pytest.skip("this host has no non-loopback IPv4 address to try connecting to")
    with pytest.raises(OSError):
        socket.create_connection((external, gcs_port), timeout=5).close()


def test_a_local_run_starts_its_own_cluster_next_to_a_running_one() -> None:
    """A cluster started on this machine (`ray start`, a test's `Cluster`) writes its address
    where a bare ``ray.init()`` finds and attaches to it, then refuses ``num_cpus``: a local
    run must start its own private cluster instead."""
    import subprocess
    import sys

    from ray.cluster_utils import Cluster

    other = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        probe = (
            "import ray; from megdecode.raycluster import init_ray; init_ray(num_cpus=1); "
            "print(ray.get_runtime_context().gcs_address); ray.shutdown()"
        )
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().splitlines()[-1] != other.gcs_address
    finally:
        other.shutdown()
