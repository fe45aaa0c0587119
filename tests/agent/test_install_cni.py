"""``weave-py install-cni`` (agent/cni/install.py): the plugin binary and the conflist land
atomically, other networks stay."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cni import install

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    """The plugin binary where install-cni takes it from by default."""
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-plugin"), install.default_plugin()],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def run_install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "install-cni", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=30, check=False,
    )  # fmt: skip


def test_installs_plugin_and_conflist_and_keeps_other_files(tmp_path: Path) -> None:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    conf_dir.mkdir()
    bin_dir.mkdir()
    other = conf_dir / "05-other.conflist"
    other.write_text('{"cniVersion": "1.0.0", "name": "other", "plugins": []}')
    (bin_dir / "bridge").write_bytes(b"not ours")
    sock = str(tmp_path / "cni.sock")
    done = run_install("--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir), "--socket", sock)
    assert done.returncode == 0, done.stderr
    plugin = bin_dir / install.PLUGIN_TYPE
    assert stat.S_IMODE(plugin.stat().st_mode) == 0o755
    assert plugin.read_bytes() == Path(install.default_plugin()).read_bytes()
    conf = json.loads((conf_dir / install.CONFLIST_NAME).read_text())
    assert conf["name"] == "weave-py" and conf["cniVersion"] == "1.0.0"
    assert [p["type"] for p in conf["plugins"]] == ["weave-py-net", "portmap"]
    assert conf["plugins"][0]["socket"] == sock
    assert conf["plugins"][1]["capabilities"] == {"portMappings": True}
    assert other.read_text().startswith('{"cniVersion": "1.0.0", "name": "other"')
    assert (bin_dir / "bridge").read_bytes() == b"not ours"
    # Re-running replaces our two files only, and leaves no temporary files.
    again = run_install("--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir), "--socket", sock)
    assert again.returncode == 0
    assert sorted(os.listdir(conf_dir)) == ["05-other.conflist", install.CONFLIST_NAME]
    assert sorted(os.listdir(bin_dir)) == ["bridge", install.PLUGIN_TYPE]


def test_installed_plugin_answers_version_with_dummy_env(tmp_path: Path) -> None:
    written = install.install(str(tmp_path / "b"), str(tmp_path / "c"), str(tmp_path / "s"))
    env = {"CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "dummy", "CNI_NETNS": "dummy",
           "CNI_IFNAME": "dummy", "CNI_PATH": "dummy"}  # fmt: skip
    done = subprocess.run([written[0]], input="", capture_output=True, text=True, env=env,
                          timeout=10, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1.0.0" in json.loads(done.stdout)["supportedVersions"]


def test_the_plugin_option_names_the_binary_to_install(tmp_path: Path) -> None:
    other = tmp_path / "other-build"
    other.write_bytes(b"\x7fELF another build")
    bin_dir = tmp_path / "bin"
    done = run_install("--bin-dir", str(bin_dir), "--conf-dir", str(tmp_path / "c"),
                       "--plugin", str(other))  # fmt: skip
    assert done.returncode == 0, done.stderr
    installed = bin_dir / install.PLUGIN_TYPE
    assert installed.read_bytes() == other.read_bytes()
    assert stat.S_IMODE(installed.stat().st_mode) == 0o755


def test_a_plugin_not_built_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "weave-py-net"
    done = run_install("--bin-dir", str(tmp_path / "b"), "--conf-dir", str(tmp_path / "c"),
                       "--plugin", str(missing))  # fmt: skip
    assert done.returncode == 1
    assert "scripts/build-plugin" in done.stderr and str(missing) in done.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_unwritable_target_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = run_install("--bin-dir", str(blocker / "bin"), "--conf-dir", str(tmp_path / "c"))
    assert done.returncode == 1 and "install-cni" in done.stderr
