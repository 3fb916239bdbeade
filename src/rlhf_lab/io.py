"""Small I/O helpers shared by every stage: crash-safe outputs, JSONL, metrics files, locks.

Stages never write an output in place: they write to a temporary sibling, fsync it, and rename
it over the target at the end, so an interrupted stage (a crash, SIGKILL, a full disk, a power
cut) leaves either the old output or the new one, never a half-written one (DVC would otherwise
cache a truncated file on the next run). Every temporary name carries the writer's pid
(``.<name>.tmp-<pid>-*``, ``.<name>.old-<pid>-*``), so the next writer of the same target can
tell a dead run's leftovers from a live run's work and clean them up.

A stage has several outputs (a model, its curves, its metrics file); inside
:func:`stage_outputs` each stays in its temporary sibling until the whole stage has succeeded,
and then all are renamed in, so a stage that fails or is killed changes none of them
(docs/crash-safety.md).

This module stays whole: every writer in it follows the one temporary-name, fsync and rename
protocol above, and splitting it would scatter that contract over files.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rlhf_lab.errors import ConfigError, StageBusyError, clip

TMP_TAG = "tmp"
"""Marks a sibling being written (``.<name>.tmp-<pid>-<random>``)."""
OLD_TAG = "old"
"""Marks the previous output moved aside during a swap (``.<name>.old-<pid>-<random>``)."""
OUT_MARKER = ".rlhf-lab-output"
"""File a command leaves in a folder it created for a user-given ``--out`` (see claim_out_dir)."""
LOCK_DIR = Path(".rlhf-lab/locks")
"""Per-stage lock files, relative to the repository root (the stages' working directory)."""
FAILED_DIR = Path(".rlhf-lab/failed")
"""What a failed stage leaves for the user to inspect (see :func:`failed_output`)."""


# -- crash-safe replacement --------------------------------------------------------------------


def _sibling_prefix(target: Path, tag: str, pid: int | None = None) -> str:
    return f".{target.name}.{tag}-{os.getpid() if pid is None else pid}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def target_of(path: str | Path) -> Path:
    """The output a temporary sibling (``.<name>.tmp-<pid>-*`` / ``.old-``) stands for, or
    ``path`` itself: what an error message should name."""
    path = Path(path)
    m = re.match(rf"^\.(.+)\.(?:{TMP_TAG}|{OLD_TAG})-\d+-", path.name)
    return path.parent / m.group(1) if m else path


def _stale_siblings(target: Path, tag: str) -> list[Path]:
    """``target``'s temp (``tmp``) or moved-aside (``old``) siblings whose writer is dead.

    A name without a pid (written before pids were recorded) counts as dead. A recycled pid
    only keeps a leftover until a later run: never wrong, at worst late.
    """
    if not target.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.{tag}-(?:(\d+)-)?")
    stale = []
    for p in target.parent.iterdir():
        m = pattern.match(p.name)
        if m and (m.group(1) is None or not _pid_alive(int(m.group(1)))):
            stale.append(p)
    return sorted(stale, key=lambda p: p.lstat().st_mtime)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover(target: str | Path) -> None:
    """Undo what a killed writer of ``target`` left: restore or drop its moved-aside output and
    remove its half-written temp. Runs at the start of every atomic write of ``target``.

    A writer killed between moving the old output aside and renaming the new one in leaves no
    ``target`` but an ``.old-*`` sibling: that is the last *complete* output, consistent with the
    metrics the killed stage never rewrote, so it goes back in place (the new temp, complete or
    not, belongs to a run that did not finish, so it is dropped like any other temp).
    """
    target = Path(target)
    old = _stale_siblings(target, OLD_TAG)
    if old and not os.path.lexists(target):
        # the newest: the output the dead run moved aside (another process of the same
        # `accelerate launch` entering stage_outputs may have put it back first)
        with contextlib.suppress(FileNotFoundError):
            os.rename(old.pop(), target)
            _fsync_dir(target.parent)
    for leftover in old + _stale_siblings(target, TMP_TAG):
        _remove(leftover)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and folder under ``root`` (and ``root``): the data reaches the disk
    before the rename that publishes it, else a power cut can publish empty files."""
    root = Path(root)
    if not root.is_dir():
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _publish(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` over ``target`` so that at every instant one complete version exists on
    disk under a name ``recover`` understands.

    POSIX has no portable atomic swap of two directories (Linux's renameat2 RENAME_EXCHANGE is
    not in the stdlib), so the old output is first renamed aside to ``.<name>.old-<pid>-*``; if
    the process dies before the second rename, ``recover`` puts it back. Removing the old output
    first (what this did before) left *nothing* when killed in between.
    """
    old: Path | None = None
    if os.path.lexists(target):
        old = target.parent / f"{_sibling_prefix(target, OLD_TAG)}{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)  # the previous output goes back; the caller drops tmp
        raise
    _fsync_dir(target.parent)
    if old is not None:
        _remove(old)


class _Staged:
    """The outputs of one :func:`stage_outputs` block: temp siblings written so far, by target."""

    def __init__(self, targets: Iterable[str | Path]) -> None:
        self.targets = {os.path.abspath(t) for t in targets}
        self.open: set[Path] = set()  # temps being written (a kill or error drops them)
        self.ready: dict[Path, tuple[Path, Callable[[Path, Path], None]]] = {}

    def covers(self, target: Path) -> bool:
        return os.path.abspath(target) in self.targets

    def drop(self) -> None:
        for tmp in [*self.open, *(t for t, _ in self.ready.values())]:
            _remove(tmp)
        self.open.clear()
        self.ready.clear()


_STAGED: contextvars.ContextVar[_Staged | None] = contextvars.ContextVar(
    "rlhf_lab_staged_outputs", default=None
)


@contextlib.contextmanager
def stage_outputs(*targets: str | Path) -> Iterator[None]:
    """Publish every atomic write of ``targets`` made in the block together, at its end, and
    only if the block succeeds; on any failure none of them changes.

    :func:`atomic_dir` / :func:`atomic_file` (and so :func:`write_json`, :func:`write_jsonl`,
    :class:`rlhf_lab.training.common.Curves`) of a listed target keep their complete temporary
    sibling instead of renaming it in; the renames happen here, in write order (a stage writes
    its metrics file last, so a kill between two renames leaves metrics that do not match the
    outputs, which DVC sees as a changed stage). Writes of other paths (checkpoints, caches)
    publish at once, as outside a block. Dead runs' leftovers of every target are swept first.
    """
    for target in targets:
        recover(target)
    staged = _Staged(targets)
    token = _STAGED.set(staged)
    try:
        yield
    except BaseException:
        staged.drop()
        raise
    finally:
        _STAGED.reset(token)
    try:
        for target, (tmp, publish) in list(staged.ready.items()):
            publish(tmp, target)
            del staged.ready[target]
    except BaseException:
        staged.drop()  # what was not renamed in yet: its target keeps the previous output
        raise


def _finish(tmp: Path, target: Path, publish: Callable[[Path, Path], None]) -> None:
    """Publish a complete ``tmp`` now, or hand it to the enclosing :func:`stage_outputs`."""
    staged = _STAGED.get()
    if staged is None or not staged.covers(target):
        publish(tmp, target)
        return
    staged.open.discard(tmp)
    previous = staged.ready.pop(target, None)
    if previous is not None:  # written twice in one block: the later write wins
        _remove(previous[0])
    staged.ready[target] = (tmp, publish)


def _track(tmp: Path) -> None:
    staged = _STAGED.get()
    if staged is not None:
        staged.open.add(tmp)


def _untrack(tmp: Path) -> None:
    staged = _STAGED.get()
    if staged is not None:
        staged.open.discard(tmp)


def _replace_file(tmp: Path, target: Path) -> None:
    os.replace(tmp, target)  # a single file needs no aside copy: atomic on POSIX
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``target`` only if the block succeeds
    (inside :func:`stage_outputs` listing ``target``: only if the whole stage succeeds).

    On any failure (the block, fsync, the rename) only the temporary directory this call made is
    removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=_sibling_prefix(target, TMP_TAG), dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs should be like any dir
    _track(tmp)
    try:
        yield tmp
        fsync_tree(tmp)
        _finish(tmp, target, _publish)
    except BaseException:
        _untrack(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_dir(path: str | Path) -> None:
    """Delete a folder so that a kill midway leaves it whole or gone, never half-deleted.

    ``shutil.rmtree`` killed halfway leaves a folder that still looks usable (a checkpoint whose
    ``state.json`` survived its weights); renaming it to a temp sibling first makes the removal
    all-or-nothing, and ``recover`` sweeps the rest on the next write or removal.
    """
    path = Path(path)
    recover(path)
    if not os.path.lexists(path):
        return
    doomed = path.parent / f"{_sibling_prefix(path, TMP_TAG)}{uuid.uuid4().hex[:8]}"
    os.rename(path, doomed)
    _fsync_dir(path.parent)
    _remove(doomed)


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of ``target`` for writing; rename it over ``target`` on success
    (inside :func:`stage_outputs` listing ``target``: when the whole stage succeeds)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    fd, name = tempfile.mkstemp(prefix=_sibling_prefix(target, TMP_TAG), dir=target.parent)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs should be like any file
    _track(tmp)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _finish(tmp, target, _replace_file)
    except BaseException:
        _untrack(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def failed_output(stage: str, target: str | Path) -> Path:
    """Where ``stage`` writes what would have been its output ``target`` when it fails.

    A failed stage changes none of its outputs (the last good run's records stay consistent
    with each other), but what it found (the rows it dropped, the judge's failures) must not
    be lost: it goes under :data:`FAILED_DIR`, at the output's own relative path, outside the
    pipeline (git- and dvc-ignored), and the error message names it.
    """
    return FAILED_DIR / stage / target


# -- user-given output folders and concurrent runs ---------------------------------------------


def claim_out_dir(path: str | Path, command: str) -> None:
    """Allow ``command`` to replace the folder ``path`` only if it is missing, empty, or one this
    project made (it holds :data:`OUT_MARKER`); otherwise fail with one line.

    Replacing a folder deletes it, and ``--out .`` or ``--out reports`` must never empty a
    checkout or another stage's output. Call :func:`mark_out_dir` on what you write there.
    """
    path = Path(path)
    if path.resolve() in (Path.cwd(), *Path.cwd().parents):
        raise ConfigError(f"{command}: --out {path} holds the working folder; choose another")
    if not os.path.lexists(path):
        return
    if not path.is_dir() or path.is_symlink():
        raise ConfigError(f"{command}: --out {path} is a link or not a folder; choose another")
    if (path / OUT_MARKER).is_file() or not any(path.iterdir()):
        return
    raise ConfigError(
        f"{command}: --out {path} is a non-empty folder that rlhf-lab did not create "
        f"(no {OUT_MARKER}); it would be deleted, so choose a new or empty folder"
    )


def mark_out_dir(folder: str | Path, command: str) -> None:
    """Leave :data:`OUT_MARKER` in a folder ``command`` writes, so the next run may replace it."""
    (Path(folder) / OUT_MARKER).write_text(f"written by rlhf-lab {command}\n", encoding="utf-8")


@contextlib.contextmanager
def stage_lock(stage: str, lock_dir: str | Path = LOCK_DIR) -> Iterator[None]:
    """Hold an exclusive lock for ``stage`` in this checkout; fail at once if a run holds it.

    ``dvc repro`` locks the whole repo, but two direct ``rlhf-lab <stage>`` runs would otherwise
    interleave their writes (and their stale-temp cleanup). ``flock`` is released by the kernel
    when the holder dies, even by SIGKILL, so a crashed run never leaves a stale lock behind.
    The lock file is never deleted: unlinking it would let a third run lock a fresh inode.
    """

    path = Path(lock_dir) / f"{stage}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise StageBusyError(
                f"{stage} is already running in this checkout (pid {holder}, lock {path}); "
                "wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


# -- JSON, JSONL and hashes ---------------------------------------------------------------------


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows atomically as JSON lines; return how many were written."""
    n = 0
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def append_jsonl_line(path: str | Path, row: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` durably: exclusive lock, one write, fsync.

    For append-only logs that other processes may write at the same time (the arena's votes).
    The lock serialises writers; the line goes out in a single ``write`` of an ``O_APPEND``
    descriptor and is fsynced before the call returns, so a process killed after it returns
    has lost nothing. A process killed *during* an earlier write can leave a torn last line
    with no newline: it is closed with one first, so this row starts on a line of its own and
    only the torn row (not this one) is unreadable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd is closed
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:  # a regular file takes it in one write; loop in case it does not
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | Path, missing_ok: bool = False) -> list[dict[str, Any]]:
    """Read a JSONL file written by this project (trusted: errors are bugs, not user input).

    ``missing_ok``: a file that does not exist reads as no rows (a split a data stage did not
    write, e.g. no valid prompts, is just empty).
    """
    if missing_ok and not Path(path).is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _finite(value: Any) -> Any:
    # JSON has no NaN/inf; DVC's metrics readers choke on them. Store null instead.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def finite_or_none(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with every nan/inf float value replaced by None (null in a JSON file).

    For metrics that are also written nested (a model's ``provenance.json``), where
    :func:`write_json`'s top-level scrub does not reach.
    """
    return {k: _finite(v) for k, v in data.items()}


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write a JSON object atomically, sorted keys, NaN/inf as null."""
    clean = finite_or_none(data)
    with atomic_file(path) as fh:
        json.dump(clean, fh, indent=2, sort_keys=True, ensure_ascii=False)
        fh.write("\n")


MAX_JSON_DEPTH = 100
"""Deepest nesting of arrays/objects accepted in JSON from outside (data rows, a ``.json``
source, a judge reply, an arena request). Python's parser recurses: ~1000 levels raise
RecursionError, and fewer still crash whatever walks the value later."""


class JsonInputError(ValueError):
    """JSON from outside that parses but is refused: nested too deeply, or a key twice."""

    def __init__(self, message: str, duplicate_key: str | None = None) -> None:
        super().__init__(message)
        self.duplicate_key = duplicate_key
        """The repeated key, when that is the problem (the caller may count it apart)."""


def _repeated(pairs: list[tuple[str, Any]]) -> str | None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


def parse_json(
    data: str | bytes,
    *,
    max_depth: int = MAX_JSON_DEPTH,
    unique: bool = False,
    duplicates: dict[int, str] | None = None,
) -> Any:
    """``json.loads`` for untrusted input: JsonInputError (a ValueError, like a syntax error)
    when it nests deeper than ``max_depth`` or, with ``unique``, repeats a key in an object
    (``json`` keeps the last one silently). ``duplicates`` instead records ``id(object) ->
    repeated key`` for :func:`find_duplicate`. A UTF-8 byte-order mark is allowed at the start.
    """
    if isinstance(data, bytes):
        data = data.removeprefix(b"\xef\xbb\xbf")
    else:
        data = data.removeprefix("\ufeff")

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):  # only then look for which key
            key = _repeated(pairs)
            if duplicates is None:
                raise JsonInputError(f"key {clip(key)} appears twice in one object", key)
            duplicates[id(out)] = key or ""
        return out

    hook = pairs_hook if unique or duplicates is not None else None
    try:
        value = json.loads(data, object_pairs_hook=hook)
    except RecursionError:
        raise JsonInputError(f"nested deeper than {max_depth} levels") from None
    # An explicit walk, not recursion: the bound must hold whatever the interpreter's limit.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise JsonInputError(f"nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return value


def find_duplicate(value: Any, duplicates: dict[int, str]) -> str | None:
    """The first repeated key :func:`parse_json` recorded anywhere inside ``value``, or None."""
    if not duplicates:
        return None
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if id(item) in duplicates:
                return duplicates[id(item)]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def decode_utf8(data: bytes, where: str, error: type[Exception]) -> str:
    """``data`` as UTF-8 text, or ``error`` with one line naming the line and the bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{where}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def dir_digest(
    path: str | Path,
    file_sha: Callable[[Path], str] = sha256_file,
    files: Iterable[Path] | None = None,
) -> str:
    """sha256 over every file under ``path`` (or only ``files``, all under it): its relative
    POSIX name and its bytes' sha256.

    Contents under relative names, so a moved or copied directory keeps its digest; ``file_sha``
    may answer from a cache (``rlhf_lab.inputs``) as long as it returns ``sha256_file``'s value.
    """
    root = Path(path)
    chosen = (p for p in root.rglob("*") if p.is_file()) if files is None else files
    h = hashlib.sha256()
    for file in sorted(chosen):
        h.update(file.relative_to(root).as_posix().encode() + b"\0")
        h.update(file_sha(file).encode() + b"\n")
    return h.hexdigest()


def sha256_text(text: str) -> str:
    """Hex sha256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
