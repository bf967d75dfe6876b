"""
The files of C{deploy/} (docs/deploy.md) as the deployment tests read them:
their paths, the example configuration loaded with stand-in secrets, the
Prometheus scrape job and alerting rules, the Grafana dashboard's queries
with its variables filled in, the systemd unit's sections, the
Containerfile's stages; and the external tools the tests run (promtool,
prometheus, systemd-analyze).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.scripts._twistd_unix import ServerOptions  # twisted.scripts.twistd's, on POSIX

from refresherd.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "refresherd.service"
CONTAINERFILE = DEPLOY / "Containerfile"
CONFIG = DEPLOY / "refresherd.toml"
PROMETHEUS = DEPLOY / "prometheus.yml"
ALERTS = DEPLOY / "alerts.yml"
ALERTS_TESTS = DEPLOY / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
DOCS = ROOT / "docs" / "deploy.md"

CREDENTIALS = "/run/credentials/refresherd.service/"
"""Where systemd's LoadCredential= puts the token files the example configuration reads."""

ENVIRON = {
    "REDIS_PASSWORD": "redis-secret",
    "RFD_READ_TOKEN": "read-token-0123456789",
    "TIMELINE_API_AUTH": "Bearer api-secret",
}
"""The env: secrets of the example configuration."""


def tool(name: str) -> str:
    """The path of a command the tests need; a failure, never a skip, when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run .ci/run, which installs it")
    return path


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=120)


def scrape_config() -> dict[str, Any]:
    """The scrape job of deploy/prometheus.yml."""
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [c for c in config["scrape_configs"] if c["job_name"] == "refresherd"]
    return dict(job)


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__range", "__all"})
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every target of every panel."""
    return [(p["title"], t) for p in dashboard()["panels"] for t in p["targets"]]


def variable_values() -> dict[str, str]:
    """A value for each variable: its All value, or its current one; builtins a duration."""
    values = {name: "1m" for name in GRAFANA_BUILTINS}
    for variable in dashboard()["templating"]["list"]:
        if variable.get("includeAll"):
            values[variable["name"]] = variable["allValue"]
        else:
            values[variable["name"]] = variable["current"]["value"]
    return values


def substitute(expr: str) -> str:
    values = variable_values()
    return VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def secret_files() -> Callable[[str], bytes]:
    """A read_file: the example configuration, and a token for every credential file."""

    def read_file(path: str) -> bytes:
        if path == str(CONFIG):
            return CONFIG.read_bytes()
        if path.startswith(CREDENTIALS) and "/" not in path[len(CREDENTIALS) :]:
            return f"  token-{path[len(CREDENTIALS) :]}-0123456789\n".encode()
        raise FileNotFoundError(path)

    return read_file


def loaded_config() -> Config:
    return load_config(str(CONFIG), ENVIRON, read_file=secret_files())


def endpoint_port(description: str) -> int:
    """The TCP port a server endpoint string listens on."""
    reactor = MemoryReactorClock()
    serverFromString(reactor, description).listen(Factory())
    ((port, _, _, _),) = reactor.tcpServers
    return int(port)


def unit() -> dict[str, list[tuple[str, str]]]:
    """The sections of the unit, each a list of (key, value) in order (keys repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    lines = iter(UNIT.read_text().splitlines())
    for line in lines:
        line = line.strip()
        while line.endswith("\\"):
            line = line[:-1] + " " + next(lines).strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        assert current is not None, line
        current.append((key.strip(), value.strip()))
    return sections


def values(section: str, key: str) -> list[str]:
    return [v for k, v in unit()[section] if k == key]


def value(section: str, key: str) -> str:
    found = values(section, key)
    assert found, f"[{section}] {key}= is missing"
    return found[-1]


def twistd_options(argv: list[str]) -> ServerOptions:
    """twistd's options for C{argv} (after the program), as twistd parses them."""
    options = ServerOptions()
    options.parseOptions(argv)
    return options


@attrs.frozen
class Stage:
    image: str
    name: str | None
    instructions: tuple[tuple[str, str], ...]

    def all(self, instruction: str) -> list[str]:
        return [arguments for name, arguments in self.instructions if name == instruction]


def containerfile() -> list[Stage]:
    """The stages of the Containerfile, ARG defaults of the global scope applied to FROM."""
    logical: list[str] = []
    continued = ""
    for line in CONTAINERFILE.read_text().splitlines():
        if line.strip().startswith("#") or (not line.strip() and not continued):
            continue
        if line.endswith("\\"):
            continued += line[:-1] + " "
            continue
        logical.append(continued + line)
        continued = ""
    assert not continued, "a continuation line at the end"
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[tuple[str, str]] = []
    for text in logical:
        instruction, _, rest = text.strip().partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG" and not stages and not current:
            name, _, default = rest.partition("=")
            arguments[name] = default
        elif instruction == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: arguments[m[1] or m[2]], words[0])
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, stage, ()))
            current = []
        else:
            assert stages, f"{instruction} before FROM"
            current.append((instruction, rest))
            stages[-1] = attrs.evolve(stages[-1], instructions=tuple(current))
    return stages


def exec_form(text: str) -> list[str]:
    """The JSON array of an exec-form instruction (never the shell form)."""
    argv = json.loads(text)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), text
    return argv


def container_argv() -> list[str]:
    final = containerfile()[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    return exec_form(entrypoint) + exec_form(cmd)


def container_options() -> Any:
    argv = container_argv()
    assert argv[0] == "twistd"
    options = twistd_options(argv[1:])
    assert options.subCommand == "refresherd"
    return options.subOptions


def healthcheck() -> list[str]:
    (text,) = containerfile()[-1].all("HEALTHCHECK")
    options, _, command = text.partition("CMD ")
    assert re.fullmatch(r"(--[a-z-]+=[0-9a-z]+\s*)*", options), options
    return exec_form(command)
