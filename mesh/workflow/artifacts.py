"""A content-addressed local artifact store, so large step outputs travel by reference.

A blob is named by its sha256 and written through a temp file in the same directory, then
fsynced and renamed: a reader (or a process restarted after kill -9) sees either no file or
the whole file, never a torn one, and the run store may point at it as soon as ``put``
returns. Equal content is stored once. numpy arrays are kept as their raw C-ordered buffer,
with dtype and shape in the content type; object dtypes are refused (no pickle, ever).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

from mesh.errors import Error

URI_PREFIX: Final = "artifact://sha256/"
OCTET_STREAM: Final = "application/octet-stream"
NUMPY_TYPE: Final = "application/x-numpy"
CHUNK: Final = 4 * 1024 * 1024
_HEX_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_SHARD_RE: Final = re.compile(r"^[0-9a-f]{2}$")
_ARRAY_KINDS: Final = "biufcmMSU"


class ArtifactError(Error, ValueError):
    """An artifact is missing, corrupt, or cannot be stored (e.g. an object-dtype array)."""


@dataclass(frozen=True)
class ArtifactRef:
    """A pointer to a stored blob: what goes into the run store instead of the bytes."""

    uri: str
    sha256: str
    size: int
    content_type: str = OCTET_STREAM

    @property
    def is_array(self) -> bool:
        return self.content_type.split(";", 1)[0].strip() == NUMPY_TYPE


class ArtifactStore:
    """Blobs under ``root/ab/abcdef...`` (sha256 hex), written atomically.

    ``fsync`` (default on) makes a blob durable before ``put`` returns, so a run store commit
    that names it after a crash never dangles.
    """

    def __init__(self, root: str | Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes | bytearray | memoryview, *,
            content_type: str = OCTET_STREAM) -> ArtifactRef:
        """Store one buffer; returns its reference (the same one for equal content)."""
        view = memoryview(data).cast("B")
        return self.put_chunks(
            (view[i:i + CHUNK] for i in range(0, len(view), CHUNK)), content_type=content_type
        )

    def put_chunks(self, chunks: Iterable[bytes | memoryview], *,
                   content_type: str = OCTET_STREAM) -> ArtifactRef:
        """Stream buffers to a temp file while hashing, then rename it to its content name."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    digest.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            sha = digest.hexdigest()
            final = self._path_for(sha)
            if _reuse(final):
                os.unlink(tmp_name)
            else:
                final.parent.mkdir(exist_ok=True)
                os.replace(tmp_name, final)
                if self.fsync:
                    _fsync_dir(final.parent)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise
        return ArtifactRef(uri=URI_PREFIX + sha, sha256=sha, size=size, content_type=content_type)

    def put_array(self, array: np.ndarray) -> ArtifactRef:
        """Store an array's raw buffer; dtype and shape ride in the content type."""
        array = c_order(array)
        content_type = array_content_type(array)
        return self.put(array.reshape(-1).view(np.uint8).data if array.size else b"",
                        content_type=content_type)

    def path(self, ref: ArtifactRef) -> Path:
        """Where the blob lives; raises :class:`ArtifactError` for a malformed reference."""
        if ref.uri != URI_PREFIX + ref.sha256 or not _HEX_RE.match(ref.sha256):
            raise ArtifactError(f"malformed artifact reference {ref.uri!r}")
        return self._path_for(ref.sha256)

    def exists(self, ref: ArtifactRef) -> bool:
        return self.path(ref).is_file()

    def retain(self, ref: ArtifactRef) -> int:
        """The size of the blob ``ref`` names, refreshed as a ``put`` of equal content is,
        so a prune running meanwhile (:meth:`discard`) keeps it; ArtifactError if malformed
        or missing."""
        path = self.path(ref)
        if not _reuse(path):
            raise ArtifactError(f"artifact {ref.uri} is missing from {self.root}")
        return path.stat().st_size

    def open(self, ref: ArtifactRef) -> io.BufferedReader:
        """Open the blob for reading (caller closes)."""
        try:
            return self.path(ref).open("rb")
        except FileNotFoundError:
            raise ArtifactError(f"artifact {ref.uri} is missing from {self.root}")

    def read(self, ref: ArtifactRef, *, verify: bool = False) -> bytearray:
        """Read the whole blob into a fresh buffer, optionally checking its sha256."""
        buf = bytearray(ref.size)
        with self.open(ref) as fh:
            got = fh.readinto(buf)
            if got != ref.size or fh.read(1):
                raise ArtifactError(f"artifact {ref.uri} has the wrong size")
        if verify and hashlib.sha256(buf).hexdigest() != ref.sha256:
            raise ArtifactError(f"artifact {ref.uri} is corrupt (sha256 mismatch)")
        return buf

    def verify(self, ref: ArtifactRef) -> bool:
        """True when the blob exists and its content still hashes to its name."""
        digest = hashlib.sha256()
        try:
            with self.open(ref) as fh:
                for _ in range(ref.size // CHUNK + 2):
                    chunk = fh.read(CHUNK)
                    if not chunk:
                        break
                    digest.update(chunk)
        except ArtifactError:
            return False
        return digest.hexdigest() == ref.sha256

    def load_array(self, ref: ArtifactRef, *, verify: bool = False) -> np.ndarray:
        """Rebuild an array stored by :meth:`put_array`; the result is read-only (shareable)."""
        dtype, shape = parse_array_content_type(ref.content_type)
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if expected != ref.size:
            raise ArtifactError(f"artifact {ref.uri}: size {ref.size} does not fit {shape}")
        arr = np.frombuffer(self.read(ref, verify=verify), dtype=dtype).reshape(shape)
        arr.flags.writeable = False
        return arr

    def delete(self, ref: ArtifactRef) -> None:
        self.path(ref).unlink(missing_ok=True)

    def discard(self, uri: str, *, untouched_since: float, dry_run: bool = False) -> int | None:
        """Delete the blob ``uri`` names, which no run points at any more, unless a ``put``
        stored equal content at or after ``untouched_since`` (epoch seconds): that run may
        name it in its next commit. The blob is first renamed away, so a ``put`` racing
        this either touched it before (then it is put back) or finds it gone and writes it
        again. Returns the bytes freed (with ``dry_run``: that would be), or None if kept
        or already gone; ArtifactError if the name is a symlink or not a regular file."""
        sha = uri[len(URI_PREFIX):]
        if not uri.startswith(URI_PREFIX) or not _HEX_RE.match(sha):
            raise ArtifactError(f"malformed artifact reference {uri!r}")
        final = self._path_for(sha)
        try:
            st = _blob_stat(final)
            if dry_run:
                return st.st_size if st.st_mtime < untouched_since else None
            grave = self._tmp / f"discard-{sha}-{os.getpid()}"
            os.replace(final, grave)
        except FileNotFoundError:
            return None
        st = os.lstat(grave)
        if st.st_mtime >= untouched_since or not stat.S_ISREG(st.st_mode):
            # reused meanwhile (or swapped for a link): back, unless put wrote it anew
            with contextlib.suppress(FileExistsError):
                os.link(grave, final, follow_symlinks=False)
            grave.unlink()
            return None
        grave.unlink()
        return st.st_size

    def blobs(self, *, on_error: Callable[[OSError], None] | None = None) -> Iterator[str]:
        """The URI of every blob file under the root, whether or not a run points at it
        (an orphan collector compares them with the store's references). Only what ``put``
        writes counts: a regular file named by a sha256 in the directory ``_path_for``
        gives it. Temp files, other names, symlinks and directories are skipped, so a scan
        never leaves the root. A directory that cannot be read goes to ``on_error`` (raised
        without one) and the scan goes on."""
        try:
            with os.scandir(self.root) as top:
                shards = sorted(e.name for e in top
                                if _SHARD_RE.match(e.name) and e.is_dir(follow_symlinks=False))
        except OSError as exc:
            if on_error is None:
                raise
            on_error(exc)
            return
        for shard in shards:
            try:
                with os.scandir(self.root / shard) as entries:
                    names = sorted(e.name for e in entries if _HEX_RE.match(e.name)
                                   and e.name[:2] == shard and e.is_file(follow_symlinks=False))
            except OSError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                continue
            yield from (URI_PREFIX + name for name in names)

    def _path_for(self, sha: str) -> Path:
        return self.root / sha[:2] / sha


def c_order(array: np.ndarray) -> np.ndarray:
    """The array in C order, copied only if needed (keeps 0-d arrays 0-d, unlike
    ``np.ascontiguousarray``)."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def check_array(array: np.ndarray) -> None:
    """Refuse dtypes that cannot travel as raw bytes (objects, structured records)."""
    if array.dtype.hasobject or array.dtype.kind not in _ARRAY_KINDS:
        raise ArtifactError(
            f"cannot store an array of dtype {array.dtype}: only plain numeric, bool, "
            "datetime and fixed-width string dtypes travel as raw buffers"
        )


def array_content_type(array: np.ndarray) -> str:
    check_array(array)
    shape = ",".join(str(d) for d in array.shape)
    return f"{NUMPY_TYPE}; dtype={array.dtype.str}; shape={shape}"


def parse_array_content_type(content_type: str) -> tuple[np.dtype, tuple[int, ...]]:
    """Inverse of :func:`array_content_type`; strict, because it comes from storage."""
    parts = [p.strip() for p in content_type.split(";")]
    fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    if parts[0] != NUMPY_TYPE or "dtype" not in fields or "shape" not in fields:
        raise ArtifactError(f"not a numpy content type: {content_type!r}")
    try:
        dtype = np.dtype(fields["dtype"])
        shape = tuple(int(d) for d in fields["shape"].split(",") if d != "")
    except (TypeError, ValueError):
        raise ArtifactError(f"bad numpy content type: {content_type!r}")
    if dtype.hasobject or dtype.kind not in _ARRAY_KINDS or any(d < 0 for d in shape):
        raise ArtifactError(f"refusing numpy content type: {content_type!r}")
    return dtype, shape


def _reuse(path: Path) -> bool:
    """Whether equal content is stored already; its mtime is refreshed, so a prune running
    meanwhile (:meth:`ArtifactStore.discard`) keeps it for the run about to name it."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except PermissionError:  # another user's blob: it exists, and it is theirs to age
        return True
    return True


def _blob_stat(path: Path) -> os.stat_result:
    """The blob file's own stat; ArtifactError if it (or its directory) is a symlink or not
    a regular file: a prune deletes what ``put`` wrote, never what a link points at."""
    if not stat.S_ISDIR(os.lstat(path.parent).st_mode):
        raise ArtifactError(f"{path.parent} is not a directory of blobs")
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{path} is not a blob file")
    return st


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the directory that holds the new name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
