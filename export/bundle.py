"""The bundle: a directory of exported towers plus ``manifest.json``.

The manifest records everything a runtime needs to use the artifacts without the
training code — embed dim, image size, mean/std and the resize/crop rule, the tokenizer
(its vocabulary file is copied into the bundle), context length and token dtype, the
logit scale, each artifact's backend, precision, inputs and outputs — plus tool
versions, a sha256 of every file, and the parity results. Loading checks the checksums.
Bundles are written to a temporary directory and renamed into place.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

from mobileclip.errors import MobileCLIPError
from mobileclip.hashing import sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class BundleError(MobileCLIPError):
    """A bundle is missing, incomplete, or has been modified since it was written."""


def sha256(path: Union[str, Path]) -> str:
    return sha256_file(path)


def write_manifest(directory: Path, manifest: dict) -> None:
    """Checksum every file in ``directory`` (but the manifest) into the manifest and write it."""
    # Every file, at any depth (a Core ML .mlpackage is a directory), by relative path.
    manifest["files"] = {p.relative_to(directory).as_posix(): sha256(p) for p in sorted(directory.rglob("*"))
                         if p.is_file() and p.relative_to(directory).as_posix() not in (MANIFEST, f".{MANIFEST}.tmp")}
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, directory / MANIFEST)


def load_manifest(directory: Union[str, Path], verify: bool = True) -> dict:
    """Read a bundle's manifest; with ``verify``, check every file against its sha256."""
    directory = Path(directory)
    mpath = directory / MANIFEST
    if not directory.is_dir():
        raise BundleError(f"bundle {str(directory)!r} does not exist")
    if not mpath.is_file():
        raise BundleError(f"{str(directory)!r} is not a bundle (no {MANIFEST}); create one with `mobileclip export`")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{str(mpath)!r} is not valid JSON ({e})") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{str(mpath)!r}: unsupported bundle format {manifest.get('format_version')!r}")
    if verify:
        for name, digest in manifest.get("files", {}).items():
            p = directory / name
            if not p.is_file():
                raise BundleError(f"bundle file {str(p)!r} is missing; re-export the bundle")
            if sha256(p) != digest:
                raise BundleError(f"bundle file {str(p)!r} does not match its checksum (modified or truncated); "
                                  "re-export the bundle")
    return manifest
