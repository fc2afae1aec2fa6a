"""Build the bt-agent image with podman and no registry: ``make image``.

Three steps, each timed (deploy/image/README.md):

1. **The base.** A Debian bookworm root file system made by ``debootstrap --variant=minbase``
   with Python 3.11, from the mirror apt already uses (read from apt's sources at run time),
   imported with ``podman import`` as ``localhost/bt-agent-base:bookworm``. It is made once:
   the image stays in podman's store, and its tarball in the cache directory
   (``$XDG_CACHE_HOME/bt-agent``, default ``~/.cache/bt-agent``), so a removed image is
   imported again without a second debootstrap. Both carry the recipe below, and a base made
   by another recipe is made again.
2. **The wheelhouse.** ``pip wheel`` of a fresh copy of the sources (the files the Dockerfile
   copies) with this interpreter, compiled, and every runtime dependency, outside podman:
   this interpreter's pip knows the package indexes, the build does not need to.
3. **The image.** ``podman build --isolation=chroot`` of the repository's Dockerfile with
   ``WHEELS=context`` (install from the wheelhouse, no network) on that base. Every run
   builds it anew (``--layers=false``: no cached layer is reused and none is left behind).

Needs root (debootstrap, podman import) and Python 3.11 (the base's ``python3``). Exit 0 when
the image is built, 1 when a step failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"

SUITE = "bookworm"
# python3-venv: the Dockerfile's runtime stage makes a venv; ca-certificates: S3 over HTTPS.
PACKAGES = ("python3", "python3-venv", "ca-certificates")
RECIPE = f"{SUITE}:minbase:{','.join(PACKAGES)}"
RECIPE_LABEL = "bt-agent.base.recipe"
BASE_IMAGE = f"localhost/bt-agent-base:{SUITE}"
BASE_PYTHON = (3, 11)  # bookworm's python3
DEFAULT_TAG = "localhost/bt-agent:latest"
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What the Dockerfile's wheels-built stage copies from the repository, and nothing built.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "_native", "agent")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.c", "*.html")
# The compiled extensions (setup.py) the wheel must carry.
EXTENSIONS = ("agent/codec/_crc32c_c", "agent/split/_splitters_c", "agent/dataproc/_dataproc_c")
# Zip entry times of the bt-agent wheel: the same sources give the same wheel bytes.
SOURCE_DATE_EPOCH = "315532800"

APT_LISTS = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


class BuildError(Exception):
    """A step failed; the message says which and what to do."""


def say(message: str) -> None:
    print(f"image: {message}", flush=True)


def run(argv: Sequence[str], **kwargs: Any) -> str:
    """Run a step with its output captured; a failure's message ends with that output's tail."""
    try:
        done = subprocess.run(
            argv, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs
        )
    except FileNotFoundError as exc:
        raise BuildError(f"{argv[0]} is not installed (Debian: apt-get install {argv[0]})") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stdout.rstrip().splitlines()[-40:])
        raise BuildError(f"`{' '.join(argv[:2])} …` exited with {done.returncode}:\n{tail}")
    return done.stdout


def cache_dir_default() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bt-agent"


# ------------------------------------------------------------------------------ mirror


def apt_mirror(suite: str = SUITE, lists: Sequence[Path] = APT_LISTS) -> str:
    """The URI of the first enabled ``deb`` source of ``suite`` with ``main`` in apt's sources."""
    files: list[Path] = []
    for path in lists:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources"))
        elif path.is_file():
            files.append(path)
    for path in files:
        text = path.read_text(errors="replace")
        parse = _deb822_uri if path.suffix == ".sources" else _one_line_uri
        found = parse(text, suite)
        if found:
            return found
    raise BuildError(
        f"no enabled `deb` source for {suite} main in {', '.join(map(str, lists))}; "
        "give the Debian mirror with --mirror URL"
    )


def _one_line_uri(text: str, suite: str) -> str | None:
    for line in text.splitlines():
        line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0])  # options like [arch=amd64]
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "deb" and fields[2] == suite and "main" in fields[3:]:
            return fields[1]
    return None


def _deb822_uri(text: str, suite: str) -> str | None:
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:  # a folded continuation line
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if (
            "deb" in fields.get("types", "").split()
            and suite in fields.get("suites", "").split()
            and "main" in fields.get("components", "").split()
            and fields.get("enabled", "yes").lower() != "no"
            and fields.get("uris")
        ):
            return fields["uris"].split()[0]
    return None


# ------------------------------------------------------------------------------ base


def image_label(image: str, label: str) -> str | None:
    """``label`` of a local image; None when the image is not there."""
    done = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{json .Labels}}", image],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return None
    labels = json.loads(done.stdout or "null") or {}
    return str(labels.get(label, ""))


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """One maker of the base at a time (two test sessions, or a test and `make image`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_base(image: str, cache: Path, mirror: str | None) -> float:
    """Make the base image when missing (or made by another recipe); its seconds spent."""
    started = time.monotonic()
    with locked(cache / "base.lock"):
        if image_label(image, RECIPE_LABEL) == RECIPE:
            say(f"base {image}: reused")
            return time.monotonic() - started
        tarball = cache / f"base-{SUITE}.tar"
        recipe_file = tarball.with_suffix(".recipe")
        if not (tarball.exists() and recipe_file.exists() and recipe_file.read_text() == RECIPE):
            debootstrap(tarball, mirror or apt_mirror())
            recipe_file.write_text(RECIPE)
        run(
            [
                "podman",
                "import",
                "--quiet",
                "--change",
                f"ENV PATH={IMAGE_PATH}",
                "--change",
                f"LABEL {RECIPE_LABEL}={RECIPE}",
                "--change",
                'CMD ["/bin/bash"]',
                str(tarball),
                image,
            ],
        )
    seconds = time.monotonic() - started
    say(f"base {image}: imported from {tarball} in {seconds:.1f} s")
    return seconds


def debootstrap(tarball: Path, mirror: str) -> None:
    if os.geteuid() != 0:
        raise BuildError("making the base image needs root (debootstrap); run it as root")
    rootfs = tarball.parent / "rootfs.tmp"
    shutil.rmtree(rootfs, ignore_errors=True)
    say(f"debootstrap --variant=minbase {SUITE} from apt's mirror (about a minute)")
    started = time.monotonic()
    try:
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
        )
        # What apt downloaded and its package lists: not needed to run, a third of the size.
        for leftover in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
        partial = tarball.with_suffix(".tar.tmp")
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."])
        partial.replace(tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    size = tarball.stat().st_size / 1e6
    say(f"debootstrap done in {time.monotonic() - started:.1f} s; {tarball} is {size:.0f} MB")


# ------------------------------------------------------------------------------ wheelhouse


def build_wheelhouse(build_dir: Path) -> tuple[Path, float]:
    """A build context holding ``wheelhouse/``: bt-agent compiled and its dependencies."""
    if sys.version_info[:2] != BASE_PYTHON:
        want = ".".join(map(str, BASE_PYTHON))
        raise BuildError(
            f"the wheelhouse must be built with Python {want}, the base's python3 "
            f"(this is {sys.version.split()[0]}); run it with a {want} interpreter"
        )
    started = time.monotonic()
    src, context = build_dir / "src", build_dir / "context"
    shutil.rmtree(src, ignore_errors=True)
    shutil.rmtree(context, ignore_errors=True)
    src.mkdir(parents=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=IGNORED)
        else:
            shutil.copy2(path, src / name)
    wheelhouse = context / "wheelhouse"
    # No build isolation: this venv has the pinned Cython and setuptools (`make install`).
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheelhouse),
            str(src),
        ],
        env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH},
        cwd=src,
    )
    wheels = sorted(wheelhouse.glob("bt_agent-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one bt_agent wheel in {wheelhouse}, found {len(wheels)}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        so_files = [n for n in wheel.namelist() if n.endswith(".so")]
    missing = [e for e in EXTENSIONS if not any(n.startswith(e) for n in so_files)]
    if missing:
        raise BuildError(f"{wheels[0].name} lacks the compiled {', '.join(missing)}")
    seconds = time.monotonic() - started
    count = len(list(wheelhouse.glob("*.whl")))
    say(f"wheelhouse: {count} wheels in {wheelhouse} in {seconds:.1f} s")
    return context, seconds


# ------------------------------------------------------------------------------ image


def image_id(image: str) -> str | None:
    done = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", image],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def build_command(context: Path, tag: str, base: str) -> list[str]:
    """The podman build of the Dockerfile from a wheelhouse (README: deploy/image)."""
    return [
        "podman",
        "build",
        "--isolation=chroot",
        "--layers=false",
        "--pull=never",
        "--file",
        str(DOCKERFILE),
        "--build-arg",
        f"BASE={base}",
        "--build-arg",
        "WHEELS=context",
        "--tag",
        tag,
        str(context),
    ]


def build_image(context: Path, tag: str, base: str) -> float:
    started = time.monotonic()
    previous = image_id(tag)
    run(build_command(context, tag, base))
    current = image_id(tag)
    if previous and previous != current:
        # The image this tag named before is untagged now; remove it unless something uses it.
        subprocess.run(["podman", "rmi", previous], capture_output=True)
    seconds = time.monotonic() - started
    say(f"podman build: {tag} ({(current or '?')[:12]}) in {seconds:.1f} s")
    return seconds


# ------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="deploy/image/build.py",
        description="Build the bt-agent image with podman from a wheelhouse, on a Debian base "
        "made with debootstrap (no registry, no network in the build).",
    )
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"the image's name ({DEFAULT_TAG})")
    parser.add_argument("--base", default=BASE_IMAGE, help=f"the base image ({BASE_IMAGE})")
    parser.add_argument(
        "--build-dir",
        type=Path,
        default=ROOT / "build" / "image",
        help="where the sources are copied and the wheelhouse is made (build/image)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=cache_dir_default(),
        help="where the base's tarball is kept ($XDG_CACHE_HOME/bt-agent)",
    )
    parser.add_argument("--mirror", help="the Debian mirror for debootstrap (apt's, by default)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        base_s = ensure_base(args.base, args.cache_dir, args.mirror)
        context, wheels_s = build_wheelhouse(args.build_dir.resolve())
        build_s = build_image(context, args.tag, args.base)
    except BuildError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    total = time.monotonic() - started
    say(
        f"built {args.tag} in {total:.1f} s "
        f"(base {base_s:.1f} s, wheelhouse {wheels_s:.1f} s, podman build {build_s:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
