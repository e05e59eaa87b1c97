"""Numba's cache of the package's kernels follows their sources (streamlstm._kernel_cache)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streamlstm import _kernel_cache

ROOT = Path(__file__).resolve().parents[2]

CALLEE = "from numba import njit\n\n@njit(cache=True)\ndef value():\n    return {}\n"
CALLER = textwrap.dedent(
    """
    from numba import njit
    from .callee import value

    @njit(cache=True)
    def twice():
        return 2 * value()
    """
)
INIT = textwrap.dedent(
    """
    import os
    from pathlib import Path
    from streamlstm import _kernel_cache

    if os.environ.get("REFRESH") == "1":
        _kernel_cache.refresh(Path(__file__).parent)
    """
)


def _package(tmp_path: Path) -> Path:
    package = tmp_path / "kernelpkg"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text(INIT)
    (package / "inner" / "__init__.py").write_text("")
    (package / "inner" / "callee.py").write_text(CALLEE.format(1))
    (package / "inner" / "caller.py").write_text(CALLER)
    return package


def _twice(tmp_path: Path, refresh: bool, cache_dir: Path | None = None) -> str:
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", REFRESH=str(int(refresh)))
    env.pop("NUMBA_CACHE_DIR", None)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    code = "import kernelpkg; from kernelpkg.inner.caller import twice; print(twice())"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("numba_cache_dir", [False, True])
def test_an_edited_callee_is_recompiled_into_its_cached_caller(tmp_path, numba_cache_dir):
    """Numba keys the caller's cache on the caller's file alone: after an edit of the
    callee's file it still runs the old callee, unless the package refreshes its cache."""
    package = _package(tmp_path)
    cache = tmp_path / "numba-cache" if numba_cache_dir else None
    assert _twice(tmp_path, refresh=True, cache_dir=cache) == "2"
    files = _kernel_cache.cached_kernel_files(package, str(cache or ""))
    assert {path.suffix for path in files} == {".nbi", ".nbc"}
    assert len(files) == 4  # an index and a data file for each of the two kernels
    (package / "inner" / "callee.py").write_text(CALLEE.format(5))
    assert _twice(tmp_path, refresh=False, cache_dir=cache) == "2"  # stale: Numba alone
    assert _twice(tmp_path, refresh=True, cache_dir=cache) == "10"
    assert _twice(tmp_path, refresh=True, cache_dir=cache) == "10"  # and cached again


def test_refresh_clears_only_when_a_module_holding_compiled_code_changes(tmp_path):
    package = tmp_path / "pkg"
    (package / "__pycache__").mkdir(parents=True)
    kernel, plain = package / "kernel.py", package / "plain.py"
    kernel.write_text("import numba\n")
    plain.write_text("x = 1\n")
    cached = [package / "__pycache__" / name for name in ("kernel.f-1.py311.nbi", "k.nbc")]
    other = package / "__pycache__" / "plain.cpython-311.pyc"

    def cache_again():
        for path in (*cached, other):
            path.write_bytes(b"")

    cache_again()
    assert _kernel_cache.refresh(package, "")  # never stamped: cleared
    assert not any(path.exists() for path in cached) and other.exists()
    cache_again()
    assert not _kernel_cache.refresh(package, "")
    plain.write_text("x = 2\n")  # no compiled code in it
    assert not _kernel_cache.refresh(package, "")
    assert all(path.exists() for path in cached)
    kernel.write_text("import numba  # edited\n")
    assert _kernel_cache.refresh(package, "")
    assert not any(path.exists() for path in cached) and other.exists()
    assert _kernel_cache.clear(package, "") == 0
