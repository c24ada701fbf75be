"""The chart library committed in static/vendor/ is, byte for byte, the built files of the
uplot release package-lock.json pins: the tarball `npm pack` fetches (from npm's cache
or the registry) must match the lockfile's integrity hash, and the committed files the
ones inside it.  To move to another release: change package.json, `make vendor`, commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "static" / "vendor"
BUILT = ("uPlot.iife.min.js", "uPlot.min.css")


def _locked() -> dict[str, str]:
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    entry: dict[str, str] = lock["packages"]["node_modules/uplot"]
    return entry


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    npm = require_tool("npm")
    out = tmp_path_factory.mktemp("npm-pack")
    done = subprocess.run(
        [npm, "pack", f"uplot@{_locked()['version']}", "--pack-destination", str(out)],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("uplot-*.tgz")
    return path


def test_package_json_pins_the_locked_release() -> None:
    manifest = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    assert manifest["dependencies"] == {"uplot": _locked()["version"]}


def test_the_fetched_tarball_is_the_one_the_lockfile_pins(tarball: Path) -> None:
    algorithm, _, digest = _locked()["integrity"].partition("-")
    assert algorithm == "sha512"
    assert base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode() == digest


def test_static_vendor_holds_the_two_built_files_and_nothing_else() -> None:
    assert sorted(p.name for p in VENDOR.iterdir()) == sorted(BUILT)


@pytest.mark.parametrize("name", BUILT)
def test_the_committed_file_is_the_released_one_byte_for_byte(tarball: Path, name: str) -> None:
    with tarfile.open(tarball) as archive:
        member = archive.extractfile(f"package/dist/{name}")
        assert member is not None
        released = member.read()
    committed = (VENDOR / name).read_bytes()
    # Digests, not the bytes: a failure names the file without printing 50 kB of it.
    assert (len(committed), _sha256(committed)) == (len(released), _sha256(released)), (
        f"static/vendor/{name} differs from uplot@{_locked()['version']}'s dist/{name}: "
        "run `make vendor`"
    )
