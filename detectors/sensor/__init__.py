"""Water and rain sensing (城市防汛): level thresholds, rate of rise, accumulated rain, sensor health."""

from .config import (
    LevelRuleConfig,
    LevelStep,
    RainRuleConfig,
    RainThreshold,
    RiseRuleConfig,
    SensorDeviceConfig,
    SensorHealthConfig,
    SensorsConfig,
)
from .monitor import SensorMonitor

__all__ = [
    "LevelRuleConfig",
    "LevelStep",
    "RainRuleConfig",
    "RainThreshold",
    "RiseRuleConfig",
    "SensorDeviceConfig",
    "SensorHealthConfig",
    "SensorMonitor",
    "SensorsConfig",
]
