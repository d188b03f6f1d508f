"""The private local cluster listens on loopback only (Ray's default is every interface)."""

from __future__ import annotations

import socket

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


def test_local_cluster_binds_the_gcs_to_loopback_only() -> None:
    import ray

    from megdecode.raycluster import init_ray

    init_ray(num_cpus=1)
    try:
        info = ray._private.worker.global_worker.node.address_info
        host, port = info["gcs_address"].rsplit(":", 1)
        assert host == "127.0.0.1" and info["node_ip_address"] == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
            pass  # reachable from this machine
        external = _external_ip()
        if external is not None:
            with pytest.raises(OSError):
                socket.create_connection((external, int(port)), timeout=5).close()
        assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
    finally:
        ray.shutdown()
