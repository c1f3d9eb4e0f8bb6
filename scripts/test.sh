#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine, then runs them.
#   Debian: mosquitto, victoria-metrics, GStreamer's RTSP server with Debian's Python bindings
#           (tests/rtsp_server.py runs under /usr/bin/python3), all started on loopback by the tests;
#           fonts-wqy-microhei (Chinese text in evidence images), chromium + chromium-driver (console test),
#           systemd (systemd-analyze verifies docker/citygate.service)
#   Python: citygate with the video and dev extras
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v victoria-metrics >/dev/null 2>&1 || need_apt+=(victoria-metrics)
/usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0'); gi.require_version('Gst', '1.0')
from gi.repository import Gst; Gst.init(None)
assert all(Gst.ElementFactory.find(e) for e in ('qtdemux', 'h264parse', 'rtph264pay'))" >/dev/null 2>&1 \
  || need_apt+=(python3 python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
                gstreamer1.0-plugins-good gstreamer1.0-plugins-bad)
[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need_apt+=(fonts-wqy-microhei)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

python3 -m pip install -q --disable-pip-version-check -e ".[video,dev]"
python3 -m ruff check .
python3 -m pytest -q "$@"
