"""The loopback services the integration tests rely on really start and answer."""

import socket


def test_mosquitto_accepts_connections(broker):
    with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
        pass


def test_victoria_metrics_answers_health(vm):
    import urllib.request

    with urllib.request.urlopen(f"{vm.url}/health", timeout=5) as r:
        assert r.read().strip() == b"OK"
