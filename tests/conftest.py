from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from services import Mosquitto, VictoriaMetrics, mosquitto, victoria_metrics  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Mosquitto:
    with mosquitto(tmp_path_factory.mktemp("mosquitto")) as b:
        yield b


@pytest.fixture(scope="session")
def vm(tmp_path_factory) -> VictoriaMetrics:
    with victoria_metrics(tmp_path_factory.mktemp("vm")) as v:
        yield v
