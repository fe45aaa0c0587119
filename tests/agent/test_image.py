"""The image build's decisions, without building: the locks against pyproject.toml, the build
context, the inputs digest, when ensure_image builds, and the local base's trimming. (The build
itself runs in the cluster lab.)"""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Sequence
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from agent.lab import image, image_base, lockfile
from agent.lab.commands import CommandError, HostCommands

ROOT = Path(__file__).resolve().parents[2]


def _project() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_locks_match_pyproject() -> None:
    assert lockfile.lock_problems(ROOT) == [], "regenerate: " + " && ".join(lockfile.LOCK_COMMANDS)


def test_locked_versions_satisfy_pyproject() -> None:
    project = _project()
    for lock, wanted in ((lockfile.LOCK, project["project"]["dependencies"]),
                         (lockfile.BUILD_LOCK, project["build-system"]["requires"])):  # fmt: skip
        pins, _ = lockfile.parse((ROOT / lock).read_text())
        for text in wanted:
            requirement = Requirement(text)
            pin = pins[lockfile.normalized(requirement.name)]
            assert requirement.specifier.contains(pin.version, prereleases=True), (lock, text)


def test_run_time_lock_has_no_test_tools() -> None:
    pins, _ = lockfile.parse((ROOT / lockfile.LOCK).read_text())
    tools = lockfile.requirement_names(_project()["project"]["optional-dependencies"]["test"])
    assert tools and not tools & set(pins)


LOCK_TEXT = """\
#    pip-compile --generate-hashes pyproject.toml
a-pkg==1.0 \\
    --hash=sha256:00 \\
    --hash=sha256:11
    # via weave-py (pyproject.toml)
b_pkg==2.0 ; python_version < "3.12" \\
    --hash=sha256:22
    # via
    #   a-pkg
    #   weave-py (pyproject.toml)
c.pkg==3.0 \\
    --hash=sha256:33
    # via a-pkg
"""


def test_parse_reads_pins_hashes_and_who_asks() -> None:
    pins, unpinned = lockfile.parse(LOCK_TEXT + "d-pkg>=1\n")
    found = {n: (p.version, p.hashes, p.own) for n, p in pins.items()}
    assert found == {"a-pkg": ("1.0", 2, True), "b-pkg": ("2.0", 1, True),
                     "c-pkg": ("3.0", 1, False)}  # fmt: skip
    assert unpinned == ["d-pkg>=1"]


def _source(tmp_path: Path, dependencies: list[str], lock: str) -> Path:
    (tmp_path / "deploy").mkdir(parents=True)
    shutil.copy(ROOT / lockfile.BUILD_LOCK, tmp_path / lockfile.BUILD_LOCK)
    (tmp_path / lockfile.LOCK).write_text(lock)
    deps = ", ".join(f'"{d}"' for d in dependencies)
    (tmp_path / "pyproject.toml").write_text(
        f'[build-system]\nrequires = ["setuptools>=68"]\n[project]\ndependencies = [{deps}]\n'
    )
    return tmp_path


def test_lock_problems_name_what_disagrees(tmp_path: Path) -> None:
    lock = LOCK_TEXT.replace("    --hash=sha256:33\n", "")
    source = _source(tmp_path, ["A_Pkg>=1", "e-pkg[x]"], lock)
    assert lockfile.lock_problems(source) == [
        f"{lockfile.LOCK} lacks e-pkg",
        f"{lockfile.LOCK} has b-pkg, which pyproject.toml no longer names",
        f"{lockfile.LOCK} has no hashes for c-pkg",
    ]
    assert lockfile.lock_problems(_source(tmp_path / "ok", ["a-pkg", "b-pkg"], LOCK_TEXT)) == []


def test_ignore_file_lets_through_exactly_the_context() -> None:
    lines = (ROOT / image.IGNORE_FILE).read_text().splitlines()
    allowed = [line[1:] for line in lines if line.startswith("!")]
    assert sorted(allowed) == sorted(image.CONTEXT)
    assert "*" in lines and "**/__pycache__" in lines


def test_containerfile_copies_only_from_the_context() -> None:
    text = (ROOT / image.CONTAINERFILE).read_text()
    sources = []
    for line in text.splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    assert sources
    for path in sources:
        assert any(path == e or path.startswith(e + "/") for e in image.CONTEXT), path
    assert re.search(r"^ARG BASE=docker\.io/library/debian:bookworm-slim$", text, re.M)


@pytest.mark.parametrize(("tag", "name"), [
    ("weave-py:0.1.0", "docker.io/library/weave-py:0.1.0"),
    ("weave-py", "docker.io/library/weave-py:latest"),
    ("me/weave-py:1", "docker.io/me/weave-py:1"),
    ("localhost/weave-py", "localhost/weave-py:latest"),
    ("registry.example:5000/net/weave-py:2", "registry.example:5000/net/weave-py:2"),
    ("quay.io/x/y@sha256:ab", "quay.io/x/y@sha256:ab"),
])  # fmt: skip
def test_reference_is_what_containerd_makes_of_a_tag(tag: str, name: str) -> None:
    assert image.reference(tag) == name


def _tree(tmp_path: Path) -> Path:
    source = _source(tmp_path, ["a-pkg", "b-pkg"], LOCK_TEXT)
    for relative in ("agent/lab/x.py", "overlay/y.py", "gossip/z.py", "README.md", "go.mod",
                     "deploy/Containerfile", ".dockerignore", "tests/t.py"):  # fmt: skip
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_text(relative)
    return source


def test_context_files_skip_bytecode_and_what_stays_out(tmp_path: Path) -> None:
    source = _tree(tmp_path)
    (source / "agent/__pycache__").mkdir()
    (source / "agent/__pycache__/x.cpython-311.pyc").write_text("")
    (source / "agent/stray.pyc").write_text("")
    assert image.context_files(source) == [
        "README.md", "agent/lab/x.py", lockfile.BUILD_LOCK, lockfile.LOCK, "go.mod",
        "gossip/z.py", "overlay/y.py", "pyproject.toml"]  # fmt: skip


def test_inputs_digest_follows_what_goes_in(tmp_path: Path) -> None:
    source = _tree(tmp_path)
    first = image.inputs_digest(source, "n:1", "base1")
    (source / "agent/__pycache__").mkdir()
    (source / "agent/__pycache__/x.pyc").write_text("new")
    (source / "tests/t.py").write_text("changed")
    assert image.inputs_digest(source, "n:1", "base1") == first
    assert image.inputs_digest(source, "n:2", "base1") != first
    assert image.inputs_digest(source, "n:1", "base2") != first
    (source / "agent/lab/x.py").chmod(0o755)
    assert image.inputs_digest(source, "n:1", "base1") != first
    (source / "agent/lab/x.py").chmod(0o644)
    assert image.inputs_digest(source, "n:1", "base1") == first
    (source / "deploy/Containerfile").write_text("FROM other")
    assert image.inputs_digest(source, "n:1", "base1") != first


class FakeCommands:
    """podman as far as ensure_image asks it: which images exist, their ids; saves write."""

    def __init__(self, images: dict[str, str]) -> None:
        self.images = images
        self.ran: list[list[str]] = []

    def output(self, argv: Sequence[str]) -> str:
        argv = _plain(argv)
        self.ran.append(list(argv))
        if argv[:3] == ["podman", "image", "inspect"]:
            return self.images[argv[-1]] + "\n"
        if argv[:2] == ["podman", "save"]:
            Path(argv[argv.index("--output") + 1]).write_text("archive")
        return ""

    def succeeds(self, argv: Sequence[str]) -> bool:
        argv = _plain(argv)
        self.ran.append(list(argv))
        return argv[:3] != ["podman", "image", "exists"] or argv[-1] in self.images

    def logged(self, argv: Sequence[str], log: Path) -> None:
        argv = _plain(argv)
        self.ran.append(list(argv))
        if argv[:2] == ["podman", "build"]:
            self.images[argv[argv.index("--tag") + 1]] = "sha256:new"


def _plain(argv: Sequence[str]) -> list[str]:
    """``argv`` as plain ``podman VERB ...``: every podman command carries image_base.PODMAN's
    global options (checked here), which the assertions below leave out."""
    if argv[0] == "podman":
        assert tuple(argv[: len(image_base.PODMAN)]) == image_base.PODMAN, argv
        return ["podman", *argv[len(image_base.PODMAN) :]]
    return list(argv)


def _verbs(ran: list[list[str]]) -> list[str]:
    return [" ".join(a[:2]) for a in ran if a[1] not in ("image",)]


def test_ensure_image_builds_once_then_reuses(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")
    settings = image.ImageSettings(source=source, cache_dir=tmp_path / "cache", ca_bundle="")
    commands = FakeCommands({image_base.NAME: "sha256:base"})
    archive = image.ensure_image("weave-py:9", settings, commands)
    assert archive.read_text() == "archive" and archive.parent == tmp_path / "cache"
    assert _verbs(commands.ran) == ["podman build", "podman save"]
    build = next(a for a in commands.ran if a[:2] == ["podman", "build"])
    assert "--network=host" in build and "--force-rm" in build and "--pull=never" in build
    assert f"BASE={image_base.NAME}" in build and "--secret" not in build
    assert build[-3:] == ["--tag", "docker.io/library/weave-py:9", str(source)]
    commands.ran.clear()
    assert image.ensure_image("weave-py:9", settings, commands) == archive
    assert _verbs(commands.ran) == []


def test_ensure_image_rebuilds_on_change_and_keeps_a_few_archives(tmp_path: Path) -> None:
    source = _tree(tmp_path / "src")
    settings = image.ImageSettings(source=source, cache_dir=tmp_path / "cache", ca_bundle="")
    commands = FakeCommands({image_base.NAME: "sha256:base"})
    made = []
    for n in range(5):
        (source / "agent/lab/x.py").write_text(f"version {n}")
        made.append(image.ensure_image("weave-py:9", settings, commands))
    assert len(set(made)) == 5
    left = sorted((tmp_path / "cache").glob("*.tar"))
    assert len(left) == image.KEPT_ARCHIVES and made[-1] in left and made[0] not in left
    assert ["podman", "rmi", "sha256:new"] not in commands.ran  # the same id: nothing replaced


def test_ensure_image_refuses_a_stale_lock(tmp_path: Path) -> None:
    source = _tree(tmp_path)
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\n[project]\ndependencies = ["a-pkg"]\n'
    )
    commands = FakeCommands({})
    with pytest.raises(image.ImageError, match=r"b-pkg, which pyproject\.toml no longer names"):
        image.ensure_image("x", image.ImageSettings(source=source, cache_dir=tmp_path), commands)
    assert commands.ran == []


def test_build_lends_the_trust_store_as_a_secret(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.crt"
    bundle.write_text("CERT")
    settings = image.ImageSettings(cache_dir=tmp_path, ca_bundle=str(bundle), base="debian:12")
    argv = image.build_command(settings, "n:1", "debian:12", "d")
    assert argv[argv.index("--secret") + 1] == f"id={image.CA_SECRET},src={bundle}"
    assert "--pull=missing" in argv
    assert f"--mount=type=secret,id={image.CA_SECRET}" in (ROOT / image.CONTAINERFILE).read_text()


def test_local_base_is_made_once_and_imported_when_missing(tmp_path: Path) -> None:
    commands = FakeCommands({image_base.NAME: "sha256:base"})
    assert image_base.ensure_base(commands, tmp_path) == image_base.NAME
    assert [a[:2] for a in commands.ran] == [["podman", "image"]]
    (tmp_path / image_base.TARBALL).write_text("rootfs")
    commands = FakeCommands({})
    assert image_base.ensure_base(commands, tmp_path) == image_base.NAME
    assert commands.ran[-1][:2] == ["podman", "import"]
    assert [a[0] for a in commands.ran] == ["podman", "podman"]  # no debootstrap, no tar


def test_failing_command_raises_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "log"
    with pytest.raises(CommandError, match=r"(?s)exited 3.*oops"):
        HostCommands().logged(["sh", "-c", "echo oops; exit 3"], log)
    with pytest.raises(CommandError, match="not found"):
        HostCommands().output(["/nonexistent/wp-img-tool"])


def test_slim_trims_a_debootstrapped_tree(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    files = ["etc/hostname", "etc/resolv.conf", "etc/apt/sources.list", "dev/null",
             "var/log/dpkg.log", "var/log/apt/term.log", "var/cache/apt/archives/a.deb",
             "var/cache/apt/pkgcache.bin", "var/lib/apt/lists/x_Packages",
             "usr/share/doc/libc6/copyright", "usr/share/doc/libc6/changelog.gz",
             "usr/share/doc/dpkg/README", "usr/share/man/man1/ls.1.gz",
             "usr/share/locale/de/LC_MESSAGES/apt.mo", "usr/bin/apt", "etc/passwd"]  # fmt: skip
    for relative in files:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(relative)
    (root / "usr/share/doc/libc-bin").symlink_to("libc6")
    for directory in ("etc/apt/apt.conf.d", "etc/dpkg/dpkg.cfg.d", "etc/apt/sources.list.d"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    image_base.slim(root, "http://mirror.example/debian", "")
    left = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
    assert left == [
        "etc/apt/apt.conf.d/90weave-py-slim", "etc/apt/sources.list.d/debian.sources",
        "etc/dpkg/dpkg.cfg.d/90weave-py-slim", "etc/passwd", "usr/bin/apt",
        "usr/share/doc/libc6/copyright"]  # fmt: skip
    sources = (root / "etc/apt/sources.list.d/debian.sources").read_text()
    assert "URIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n" in sources
    assert "security" not in sources
    assert "bookworm-security" in image_base.sources("http://m/debian")
