"""Hostile snapshot files for tests."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from streamlstm.daemon import snapshot


def compressed_bomb(path: Path, inflated: int = 1 << 30) -> None:
    """A valid snapshot plus a deflated member of ``inflated`` zero bytes (~1/1000 on disk)."""
    snapshot.save(path, {"detector": {}, "sensors": {}})
    header = {"descr": "<f8", "fortran_order": False, "shape": (inflated // 8,)}
    chunk = bytes(16 << 20)
    with (
        zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive,
        archive.open("extra.npy", "w", force_zip64=True) as member,
    ):
        np.lib.format.write_array_header_1_0(member, header)
        for _ in range(inflated // len(chunk)):
            member.write(chunk)
