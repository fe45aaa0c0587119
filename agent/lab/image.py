"""The weave-py image, built here from the Containerfile users build with (deploy/Containerfile):
``ensure_image(tag)`` answers a docker-archive that ``ctr images import`` takes, and builds it
only when its inputs changed.

The inputs are the Containerfile, the build context (the paths ``CONTEXT`` names, which
.dockerignore lets through: the locks, pyproject.toml, README.md, go.mod, agent/, overlay/ and
gossip/, without bytecode), the base image's id and the image's name; their digest names the
archive in the cache (``/var/cache/weave-py/images`` by default), so an unchanged checkout gets
the archive back at once and a changed one rebuilds (podman's layer cache keeps the stages
whose inputs did not change).

The builder is podman, with ``--network=host``: the build makes no bridge, NAT rule or sysctl on
the host, and podman's network configuration (with the lock every podman command takes there)
is in the cache, not the host's /etc/cni/net.d (``image_base.PODMAN``). With no base given,
the base is made locally from Debian's packages (agent/lab/image_base.py), for machines that
reach no container registry. The host's trust store is lent to pip during the build as a
build secret (in no layer), for networks that inspect TLS.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from agent.lab import image_base
from agent.lab.commands import CommandError, Commands, HostCommands
from agent.lab.image_base import PODMAN
from agent.lab.lockfile import LOCK_COMMANDS, lock_problems

log = logging.getLogger("weave-py")

DEFAULT_TAG = f"weave-py:{__version__}"
CACHE_DIR = Path("/var/cache/weave-py/images")
SOURCE = Path(__file__).resolve().parents[2]
CONTAINERFILE = "deploy/Containerfile"
IGNORE_FILE = ".dockerignore"
CONTEXT = ("pyproject.toml", "README.md", "go.mod", "deploy/requirements.lock",
           "deploy/build-requirements.lock", "agent", "overlay", "gossip")  # fmt: skip
SKIPPED_DIRECTORIES = ("__pycache__",)
SKIPPED_SUFFIXES = (".pyc",)
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_SECRET = "ca-bundle"  # the build secret deploy/Containerfile gives pip as its trust store
BUILD_LOG = "build.log"
KEPT_ARCHIVES = 3
INPUTS_LABEL = "io.weave-py.inputs"
USAGE = (
    "Build the weave-py image from deploy/Containerfile with podman (only when its inputs "
    "changed) and print the path of its docker-archive."
)


class ImageError(Exception):
    """The image cannot be built from this checkout as it is (e.g. a lock out of date)."""


@dataclass(frozen=True)
class ImageSettings:
    """Where and how the image is built here."""

    source: Path = SOURCE
    """The checkout: the build context and where the Containerfile is."""
    cache_dir: Path = CACHE_DIR
    """Archives, the local base's tarball and the build logs; outside the checkout, per machine."""
    base: str = ""
    """A Debian bookworm image to build on (pulled when missing); empty: the local one."""
    mirror: str = image_base.MIRROR
    """Debian archive the local base is made from."""
    security_mirror: str = image_base.SECURITY_MIRROR
    """Debian security archive in the local base's sources; empty leaves it out."""
    ca_bundle: str = CA_BUNDLE
    """The host's trust store, lent to pip during the build when present; empty: none."""
    jobs: int = 2
    """Stages podman builds at once (the plugin's and the virtualenv's are independent)."""


def reference(tag: str) -> str:
    """``tag`` fully qualified, as containerd and kubelet read it: a bare name is on docker.io
    (``library/`` for one component), and ``:latest`` is the tag when none is given."""
    first, _, rest = tag.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        path = tag if rest else f"library/{tag}"
        tag = f"docker.io/{path}"
    last = tag.rsplit("/", 1)[1]
    return tag if ":" in last or "@" in last else f"{tag}:latest"


def ensure_image(
    tag: str = DEFAULT_TAG,
    settings: ImageSettings | None = None,
    commands: Commands | None = None,
) -> Path:
    """The archive of the image ``reference(tag)``, built when its inputs changed. Raises
    ImageError when the checkout cannot be built, CommandError when a command fails."""
    settings = settings or ImageSettings()
    commands = commands or HostCommands()
    name = reference(tag)
    problems = lock_problems(settings.source)
    if problems:
        raise ImageError("; ".join(problems) + ". Regenerate: " + " && ".join(LOCK_COMMANDS))
    settings.cache_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(settings.cache_dir):
        base = settings.base or image_base.ensure_base(
            commands, settings.cache_dir, settings.mirror, settings.security_mirror
        )
        digest = inputs_digest(settings.source, name, image_id(commands, base) or base)
        archive = archive_path(settings.cache_dir, name, digest)
        if archive.exists():
            log.info("reuse image: %s (inputs %s unchanged)", archive, digest[:12])
            return archive
        _build(commands, settings, name, base, digest)
        _save(commands, name, archive)
        _prune(archive, name)
    return archive


def context_files(source: Path) -> list[str]:
    """The build context's files (relative paths, sorted): what goes into the image."""
    found = []
    for entry in CONTEXT:
        path = source / entry
        if path.is_file():
            found.append(entry)
        for directory, subdirectories, files in os.walk(path):
            subdirectories[:] = [d for d in subdirectories if d not in SKIPPED_DIRECTORIES]
            found += [os.path.relpath(os.path.join(directory, f), source) for f in files
                      if not f.endswith(SKIPPED_SUFFIXES)]  # fmt: skip
    return sorted(found)


def inputs_digest(source: Path, name: str, base_id: str) -> str:
    """sha256 over everything the image is made of: name, version, base, Containerfile, ignore
    file and every context file (path, executable bit, content)."""
    digest = hashlib.sha256()
    for part in (name, __version__, base_id):
        digest.update(part.encode() + b"\0")
    for relative in [CONTAINERFILE, IGNORE_FILE, *context_files(source)]:
        path = source / relative
        if not path.is_file():
            continue
        executable = b"x" if os.access(path, os.X_OK) else b"-"
        digest.update(relative.encode() + b"\0" + executable + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def archive_path(cache_dir: Path, name: str, digest: str) -> Path:
    """Where the archive of image ``name`` made of inputs ``digest`` is kept."""
    return cache_dir / f"{_file_stem(name)}-{digest[:16]}.tar"


def image_id(commands: Commands, name: str) -> str:
    """The id of podman's image ``name``; empty when podman has none."""
    if not commands.succeeds([*PODMAN, "image", "exists", name]):
        return ""
    return commands.output([*PODMAN, "image", "inspect", "--format", "{{.Id}}", name]).strip()


def build_command(settings: ImageSettings, name: str, base: str, digest: str) -> list[str]:
    """podman's command line for the image: host network, no container left on failure."""
    trust: list[str] = []
    if settings.ca_bundle and Path(settings.ca_bundle).is_file():
        trust = ["--secret", f"id={CA_SECRET},src={settings.ca_bundle}"]
    return [*PODMAN, "build", "--network=host", "--force-rm", f"--jobs={settings.jobs}",
            "--pull=missing" if settings.base else "--pull=never",
            "--build-arg", f"BASE={base}", "--build-arg", f"VERSION={__version__}",
            "--label", f"{INPUTS_LABEL}={digest}", *trust,
            "--file", str(settings.source / CONTAINERFILE), "--tag", name,
            str(settings.source)]  # fmt: skip


def _build(commands: Commands, settings: ImageSettings, name: str, base: str, digest: str) -> None:
    replaced = image_id(commands, name)
    out = settings.cache_dir / BUILD_LOG
    out.write_text("")
    log.info("build image: %s on %s (inputs %s, log %s)", name, base, digest[:12], out)
    started = time.monotonic()
    commands.logged(build_command(settings, name, base, digest), out)
    if replaced and replaced != image_id(commands, name):
        commands.succeeds([*PODMAN, "rmi", replaced])
    log.info("build image: %s done in %.0f s", name, time.monotonic() - started)


def _save(commands: Commands, name: str, archive: Path) -> None:
    partial = archive.with_name(archive.name + ".tmp")
    partial.unlink(missing_ok=True)
    commands.output([*PODMAN, "save", "--format", "docker-archive", "--output", str(partial),
                     name])  # fmt: skip
    partial.replace(archive)
    log.info("save image: %s (%.0f MB)", archive, archive.stat().st_size / 1e6)


def _prune(archive: Path, name: str) -> None:
    """Remove all but the newest ``KEPT_ARCHIVES`` archives of image ``name`` (older ones may
    still be on their way into a lab's nodes, from another checkout)."""
    older = [p for p in archive.parent.glob(f"{_file_stem(name)}-*.tar") if p != archive]
    older.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for path in older[KEPT_ARCHIVES - 1 :]:
        path.unlink(missing_ok=True)


def _file_stem(name: str) -> str:
    return name.replace("/", "_").replace(":", "_").replace("@", "_")


@contextlib.contextmanager
def _exclusive(cache_dir: Path) -> Iterator[None]:
    """One build at a time per cache (two labs starting together wait for each other)."""
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.lab.image``: build (or find) the image; print the archive's path."""
    defaults = ImageSettings()
    parser = argparse.ArgumentParser(prog="build-image", description=USAGE)
    parser.add_argument("--tag", default=DEFAULT_TAG, help="image name (default %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=defaults.cache_dir,
                        help="archives and the local base (default %(default)s)")  # fmt: skip
    parser.add_argument("--base", default="", help="Debian bookworm base image to build on "
                        "(default: made here with debootstrap)")  # fmt: skip
    parser.add_argument("--mirror", default=defaults.mirror, help="Debian archive for the base")
    parser.add_argument("--ca-bundle", default=defaults.ca_bundle,
                        help="trust store lent to pip in the build; '' for none")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    settings = ImageSettings(cache_dir=args.cache_dir, base=args.base, mirror=args.mirror,
                             ca_bundle=args.ca_bundle)  # fmt: skip
    try:
        archive = ensure_image(args.tag, settings)
    except (ImageError, CommandError) as e:
        print(f"build-image: {e}", file=sys.stderr)
        return 1
    print(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
