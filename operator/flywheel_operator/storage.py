"""The storage seam: every read, write and listing by URI goes through here, and nothing else parses schemes.

Accepted URIs: plain paths, `file://<path>`, `pvc://<claim>/<path>` (the claim mounted at /artifacts in stage
pods), `s3://<bucket>/<key>` and `gs://<bucket>/<key>`. Object stores are reached through fsspec (s3fs,
gcsfs); credentials never come from the spec but from the environment the pod gets: `resources.storage.
secretRef` (envFrom: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY …) or workload identity through the pod's
service account; `AWS_ENDPOINT_URL_S3` (set from `resources.storage.endpointUrl`) points s3fs at an
S3-compatible store (MinIO, Ceph, moto in tests).

Importing this module imports no fsspec backend, so the operator's URI checks stay cheap.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

PVC_MOUNT = "/artifacts"
"""Where the artifact PersistentVolumeClaim is mounted in stage pods (StorageSpec.pvc)."""
LOCAL_SCHEMES = ("file", "pvc")
OBJECT_STORE_SCHEMES = ("s3", "gs")
READABLE_SCHEMES = (*LOCAL_SCHEMES, *OBJECT_STORE_SCHEMES)
"""Schemes a stage program reads and writes (besides plain paths)."""
ACCEPTED_FORMS = "a path, file://<path>, pvc://<claim>/<path>, s3://<bucket>/<key> or gs://<bucket>/<key>"
RESULT_MARKER = "result.json"
"""Published last by `publish_dir`: an output prefix without it is incomplete."""
S3_ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
CACHE_ENV = "FLYWHEEL_CACHE_DIR"
"""Local directory for object-store downloads (models that Hugging Face loads from a directory)."""
_CHUNK = 1 << 20
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class StorageError(Exception):
    """A URI cannot be read or written; the message names the URI."""


class MissingObjectError(StorageError, FileNotFoundError):
    """Nothing exists at a URI."""


def scheme(uri: str) -> str:
    """`s3` for `s3://b/k`; empty for a plain path."""
    match = _SCHEME.match(uri)
    return match.group(1) if match else ""


def is_object_store(uri: str) -> bool:
    return scheme(uri) in OBJECT_STORE_SCHEMES


def uri_problem(uri: str, *, also: Iterable[str] = ()) -> str | None:
    """Why a stage could not read `uri` (None when it can); `also` admits extra schemes (the local runner's
    `sim://`). The fix is ACCEPTED_FORMS."""
    found = scheme(uri)
    if found and found not in READABLE_SCHEMES and found not in also:
        return f"the scheme {found!r} of {uri!r} is not readable by the stages"
    if found in (*OBJECT_STORE_SCHEMES, "pvc") and not uri.split("://", 1)[1].split("/", 1)[0]:
        return f"{uri!r} names no {'claim' if found == 'pvc' else 'bucket'}"
    return None


def uri_cel_rule(also: Iterable[str] = ()) -> str:
    """The CEL rule (x-kubernetes-validations) that mirrors `uri_problem`'s scheme check in the CRD."""
    named = "|".join(s for s in READABLE_SCHEMES if s != "file")  # pvc://<claim>/…, s3://<bucket>/…
    free = "|".join(("file", *also))
    return (
        f"!self.matches('^[a-zA-Z][a-zA-Z0-9+.-]*://') || self.matches('^({free})://') "
        f"|| self.matches('^({named})://[^/]')"
    )


def join(base: str, *parts: str) -> str:
    """`base` with `/`-separated parts appended; URIs keep their scheme (no `s3:/` collapse)."""
    tail = [p.strip("/") for p in parts if p.strip("/")]
    if scheme(base):
        return "/".join([base.rstrip("/"), *tail]) if tail else base
    return posixpath.join(base, *tail) if tail else base


def local_path(uri: str) -> Path | None:
    """The local path of a plain path, `file://` or `pvc://` URI; None for an object store."""
    found = scheme(uri)
    if found == "":
        return Path(uri)
    if found == "file":
        return Path(uri[len("file://") :])
    if found == "pvc":
        _, _, rest = uri[len("pvc://") :].partition("/")
        return Path(PVC_MOUNT) / rest
    if found in OBJECT_STORE_SCHEMES:
        return None
    raise StorageError(f"{uri_problem(uri) or repr(uri)}; use {ACCEPTED_FORMS}")


def storage_options(uri: str) -> dict[str, Any]:
    """fsspec options from the environment (never from the spec): the S3 endpoint of S3-compatible stores."""
    if scheme(uri) == "s3":
        endpoint = next((os.environ[name] for name in S3_ENDPOINT_ENV if os.environ.get(name)), None)
        if endpoint:
            return {"endpoint_url": endpoint}
    return {}


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path in it) for any accepted URI."""
    path = local_path(uri)
    if path is not None:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), os.path.abspath(path.expanduser())  # fsspec lists local files by absolute path
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri, **storage_options(uri))
    except ImportError as exc:  # the backend package is missing from the image
        raise StorageError(f"{uri!r}: no filesystem for {scheme(uri)}:// is installed ({exc})") from exc


@contextmanager
def _naming(uri: str) -> Iterator[None]:
    """Backend failures (no credentials, access denied, unreachable endpoint) as StorageErrors naming the URI."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as exc:
        raise MissingObjectError(f"{uri}: no such file or object") from exc
    except Exception as exc:
        hint = "; check the credentials (resources.storage.secretRef) and endpoint" if is_object_store(uri) else ""
        raise StorageError(f"{uri}: {type(exc).__name__}: {exc}{hint}") from exc


def exists(uri: str) -> bool:
    with _naming(uri):
        fs, path = filesystem(uri)
        return bool(fs.exists(path))


def is_dir(uri: str) -> bool:
    with _naming(uri):
        fs, path = filesystem(uri)
        return bool(fs.isdir(path))


def list_files(uri: str, *, suffixes: Iterable[str] = ()) -> list[str]:
    """The URIs of the files at `uri` (itself when it is a file; recursively, sorted, hidden parts skipped)."""
    with _naming(uri):
        fs, path = filesystem(uri)
        fs.invalidate_cache(path)  # a prefix another process writes to (checkpoints) is listed as it is now
        if fs.isfile(path):
            return [uri]
        if not fs.isdir(path):
            raise MissingObjectError(f"{uri}: no such file, object or prefix")
        wanted = tuple(suffixes)
        root = path.rstrip("/")
        found = []
        for name in fs.find(root):
            relative = name[len(root) :].lstrip("/")
            if any(part.startswith(".") for part in relative.split("/")):
                continue
            if not wanted or name.endswith(wanted):
                found.append(join(uri, relative))
        return sorted(found)


def open_uri(uri: str, mode: str = "rb", **kwargs: Any) -> IO[Any]:
    """A file object on `uri` (read streams; no whole-object download); MissingObjectError names the URI."""
    with _naming(uri):
        fs, path = filesystem(uri)
        if "r" in mode and not fs.isfile(path):
            raise MissingObjectError(f"{uri}: no such file or object")
        if "w" in mode and local_path(uri) is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return fs.open(path, mode, **kwargs)


def read_text(uri: str) -> str:
    with open_uri(uri, "rt", encoding="utf-8") as handle:
        return handle.read()


def write_text(uri: str, text: str) -> None:
    with open_uri(uri, "wt", encoding="utf-8") as handle:
        handle.write(text)


def put_file(local: Path, uri: str) -> None:
    """Copy one local file to `uri` (any backend)."""
    with _naming(uri):
        fs, path = filesystem(uri)
        if local_path(uri) is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        fs.put_file(str(local), path)


def remove(uri: str) -> None:
    """Delete a file or a whole directory (prefix); nothing to delete is fine."""
    with _naming(uri):
        fs, path = filesystem(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        fs.invalidate_cache(path)


def digest(uri: str) -> str:
    """sha256 of a file, or of a directory's (prefix's) relative file names and contents in sorted order;
    the same value for the same bytes on any backend, so lineage survives a change of store."""
    with _naming(uri):
        fs, path = filesystem(uri)
        if not fs.exists(path):
            raise MissingObjectError(f"{uri}: cannot digest it, it does not exist")
        sha = hashlib.sha256()
        if fs.isfile(path):
            files = [("", path)]
        else:
            root = path.rstrip("/")
            files = sorted((name[len(root) :].lstrip("/"), name) for name in fs.find(root))
        for relative, name in files:
            if relative:
                sha.update(relative.encode() + b"\0")
            with fs.open(name, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    sha.update(chunk)
            sha.update(b"\0")
        return sha.hexdigest()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "flywheel-cache")


def _version_key(fs: Any, remote: str, uri: str) -> str:
    """Cache key of what is at `uri` now: its objects' names, sizes and ETags (or mtimes), from one listing,
    so a retried upstream stage that rewrote the prefix is downloaded again."""
    fs.invalidate_cache(remote)
    listing = fs.find(remote.rstrip("/"), detail=True) if fs.isdir(remote) else {remote: fs.info(remote)}
    sha = hashlib.sha256(uri.rstrip("/").encode())
    for name in sorted(listing):
        info = listing[name]
        version = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime") or ""
        sha.update(f"\0{name}\0{info.get('size')}\0{version}".encode())
    return sha.hexdigest()[:24]


@contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` among the processes of this node (the ranks of one pod share the cache
    directory on their scratch volume); released when the holder exits, even when it is killed."""
    import fcntl

    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def localize(uri: str, *, select: Callable[[str], bool] | None = None, variant: str = "") -> Path:
    """A local path holding what `uri` holds: the path itself for local URIs; for an object store a download
    into the cache (for readers that need a directory, like `from_pretrained`), reused while complete.

    One download per node: the ranks of a pod share the cache, the first to take the node lock downloads into a
    temporary directory and renames it into place (atomic, with its `.complete` marker inside), the others wait
    on the lock and find the marker. A download killed half-way leaves only a temporary directory.

    `select` keeps only the files of a prefix whose relative path it accepts (a node's own checkpoint shards);
    `variant` names the selection in the cache key, so different selections never share an entry."""
    with _naming(uri):
        path = local_path(uri)
        if path is not None:
            if not path.exists():
                raise MissingObjectError(f"{uri}: no such file or directory")
            return path
        fs, remote = filesystem(uri)
        if not fs.exists(remote):
            raise MissingObjectError(f"{uri}: no such object or prefix")
        key = _version_key(fs, remote, uri)
        if variant:
            key = hashlib.sha256(f"{key}\0{variant}".encode()).hexdigest()[:24]
        root = cache_dir()
        name = posixpath.basename(remote.rstrip("/"))
        entry = root / key
        target, done = entry / name, entry / ".complete"
        if done.exists():
            return target
        root.mkdir(parents=True, exist_ok=True)
        with _node_lock(root / f".{key}.lock"):
            if done.exists():  # another rank of this node downloaded it while this one waited
                return target
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".partial", dir=root))
            try:
                if fs.isdir(remote) and select is not None:
                    base = remote.rstrip("/")
                    for found in sorted(fs.find(base)):
                        relative = found[len(base):].lstrip("/")
                        if select(relative):
                            (staging / name / relative).parent.mkdir(parents=True, exist_ok=True)
                            fs.get_file(found, str(staging / name / relative))
                    (staging / name).mkdir(parents=True, exist_ok=True)
                elif fs.isdir(remote):
                    fs.get(remote.rstrip("/") + "/", str(staging / name), recursive=True)
                    (staging / name).mkdir(parents=True, exist_ok=True)  # an empty prefix is an empty directory
                else:
                    fs.get(remote, str(staging / name))
                (staging / ".complete").touch()
                shutil.rmtree(entry, ignore_errors=True)  # what a killed download left before the rename
                os.replace(staging, entry)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return target


def publish_dir(local_dir: Path, uri: str) -> None:
    """Upload a finished output directory to an object-store prefix, replacing what a previous attempt left.

    Object stores have no atomic rename: the old `result.json` is deleted first and the new one uploaded last,
    so a reader that sees a result sees the files it names.
    """
    with _naming(uri):
        fs, remote = filesystem(uri)
        remote = remote.rstrip("/")
        marker = f"{remote}/{RESULT_MARKER}"
        if fs.exists(marker):
            fs.rm(marker)
        if fs.exists(remote):
            fs.rm(remote, recursive=True)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        for file in files:
            relative = file.relative_to(local_dir).as_posix()
            if relative != RESULT_MARKER:
                if local_path(uri) is not None:  # a local prefix: directories are not implied by file names
                    Path(f"{remote}/{relative}").parent.mkdir(parents=True, exist_ok=True)
                fs.put_file(str(file), f"{remote}/{relative}")
        if (local_dir / RESULT_MARKER).is_file():
            fs.put_file(str(local_dir / RESULT_MARKER), marker)
        fs.invalidate_cache(remote)


def serving_uri(uri: str, claim: str | None) -> str:
    """A model location as KServe's storage initializer reads it: object-store and pvc:// URIs stay, a path
    under the artifact claim's mount becomes `pvc://<claim>/<path>`; anything else is returned unchanged."""
    found = scheme(uri)
    if found == "file":
        uri = uri[len("file://") :]
    elif found:
        return uri
    if claim and (uri == PVC_MOUNT or uri.startswith(PVC_MOUNT + "/")):
        return f"pvc://{claim}/{uri.removeprefix(PVC_MOUNT).lstrip('/')}"
    return uri
