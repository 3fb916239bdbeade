"""Run a docstring's ``>>>`` examples against its function, never in the trainer's process.

    result = run_doctests(docstring, code, setup="from typing import List", name="add")
    result.score        # fraction of examples that passed; None result: no example to run
    result.layers       # the confinement layers that were active for this run

Each call starts one child process (:mod:`rlhf_lab.tasks.doctest_child`) and confines it in
layers; the kernel enforces the outer ones, so an action the inner audit hook does not watch is
still refused (``docs/sandbox.md`` lists what each layer blocks):

* **bubblewrap** (``bwrap``, Debian's ``bubblewrap`` package) when it can start a sandbox here:
  new user, PID, mount, network, IPC, UTS and cgroup namespaces, no capabilities, no nested user
  namespaces, killed when this process dies (``--die-with-parent``), a new session (no
  terminal). Its filesystem is built from nothing: ``/usr`` and the Python installation
  read-only, a fresh ``/proc`` and ``/dev`` (read-only too), and a size-capped tmpfs as the
  working directory, the only writable place; the root is remounted read-only. The
  repository, ``$HOME``, ``/etc``, ``/tmp`` and this process's files are not there at all, and
  no process outside is visible, so none can be signalled.
* **seccomp** (a filter built with libseccomp through ``pyseccomp`` and loaded by bubblewrap
  before the interpreter starts): new processes, sockets, signals, tracing, namespaces, mounts
  and a few kernel attack surfaces (bpf, io_uring, userfaultfd, keyrings) fail with ``EPERM``.
* **fallback**: without bubblewrap, ``unshare`` (util-linux) where the kernel allows user
  namespaces gives PID, network and IPC namespaces but no read-only filesystem; where it does
  not, nothing from the kernel. Either way one warning line says so, once per process.
* In every case: a fresh interpreter, ``python -I -S`` (no ``PYTHON*`` variables, no user site,
  no ``site``: only the standard library is importable); an environment of ``PATH``, ``HOME``
  (the working directory) and ``LC_ALL`` only, so no API key is inherited; resource limits the
  child sets on itself (CPU seconds, address space, largest file, no new processes — the last
  one Linux does not apply to root); an audit hook (PEP 578) installed before any of the row's
  code runs, refusing sockets, subprocesses, ``os.fork`` / ``exec`` / ``kill``, ``ctypes``,
  frame inspection, writes outside the working directory and reads outside it and the standard
  library; a wall-clock timeout on the whole child and a SIGALRM timer per example.

The result line the child prints starts with a random nonce, so an example that prints a
result line of its own does not count. The nonce is in the child's memory, though, and
``sys._getframe`` is refused but a traceback's frames are not: code written to walk the
interpreter's frames could still forge its score. The sandbox confines what examples can do to
the machine; it does not make a determined reply honest (``analyze_rewards --samples`` shows
what PPO learned).
"""

from __future__ import annotations

import contextlib
import dataclasses
import doctest
import errno
import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("doctest_child.py")
"""The child program, shipped in the package and run by path (never imported)."""

SANDBOX_DIR = "/sandbox"
"""The child's working directory inside bubblewrap: a tmpfs, the only writable place."""

SANDBOX_CHILD = "/doctest_child.py"
"""Where the child program is bound (read-only) inside bubblewrap."""

BASE_LAYERS = ("clean_env", "rlimits")
"""Layers every run has (the audit hook is recorded separately: tests may turn it off)."""


@dataclass(frozen=True)
class Limits:
    """What one child may use."""

    wall_s: float = 10.0
    """Wall-clock seconds for the whole child (interpreter start included)."""
    per_example_s: float = 2.0
    """Wall-clock seconds for one example (SIGALRM in the child)."""
    cpu_s: int = 5
    """CPU seconds (RLIMIT_CPU): the backstop for loops in C code that SIGALRM cannot stop."""
    memory_bytes: int = 512 * 2**20
    """Address space (RLIMIT_AS)."""
    output_bytes: int = 64 * 2**10
    """Largest file the child writes (RLIMIT_FSIZE), its stdout and stderr included."""
    disk_bytes: int = 8 * 2**20
    """Size of the working directory's tmpfs under bubblewrap (all its files together)."""


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class DoctestResult:
    """What running one docstring's examples gave."""

    passed: int
    total: int
    outcomes: tuple[str, ...]
    """Per example: ``pass``, ``fail`` or ``error:<ExceptionType>`` (a refused action is
    ``error:Blocked`` from the audit hook, or the ``OSError`` the kernel raised: for example
    ``error:PermissionError``, ``error:OSError`` for a read-only filesystem; a timed-out example
    ``error:TimeoutError``)."""
    status: str
    """``ok``; ``timeout`` (the wall clock ran out); ``killed`` (a limit's signal, e.g.
    SIGXCPU); ``output_capped`` (stdout reached :attr:`Limits.output_bytes`, so no result
    line fit: CPython ignores SIGXFSZ, the write fails instead); ``no_result`` (the child
    ended without a valid result line)."""
    layers: tuple[str, ...] = ()
    """The confinement layers active for this run: :attr:`Isolation.layers` (``seccomp``
    among them when bubblewrap loads the filter: it refuses to start otherwise), then
    ``clean_env``, ``rlimits`` and ``audit_hook``."""

    @property
    def score(self) -> float:
        """Fraction of examples that passed; 0 when the child gave no result."""
        return self.passed / self.total if self.total else 0.0


def examples(docstring: str) -> list[doctest.Example]:
    """The ``>>>`` examples of ``docstring`` (parsed only, nothing run)."""
    try:
        return doctest.DocTestParser().get_examples(docstring)
    except ValueError:  # inconsistent indentation: doctest cannot read them
        return []


def calls_function(docstring: str, name: str) -> bool:
    """Does one of the examples use ``name``? Examples that never touch the function
    (``>>> 1 + 1``) prove nothing about it and would be a free score."""
    word = re.compile(r"(?<![\w.])" + re.escape(name) + r"\b")
    return any(word.search(ex.source) for ex in examples(docstring))


# --- the kernel's layers ----------------------------------------------------------------------

SECCOMP_DENIED = (
    # new processes (threads stay allowed: clone with CLONE_THREAD, below)
    "fork",
    "vfork",
    "execveat",
    # network
    "socket",
    "socketpair",
    # signals to anything but itself, and handles on other processes
    "kill",
    "tkill",
    "tgkill",
    "rt_sigqueueinfo",
    "rt_tgsigqueueinfo",
    "pidfd_open",
    "pidfd_getfd",
    "pidfd_send_signal",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    # namespaces and mounts (the read-only view must stay as built)
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsmount",
    "fsconfig",
    "mount_setattr",
    # kernel attack surface no doctest needs
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "keyctl",
    "add_key",
    "request_key",
    "personality",
)
"""System calls the seccomp filter answers with ``EPERM``. ``execve`` stays allowed (bubblewrap
loads the filter before it starts the interpreter, and fork is gone, so an ``exec`` only
replaces the confined child by another confined program); ``clone3`` answers ``ENOSYS`` so that
glibc falls back to ``clone``, whose flags a classic filter can inspect (``clone3`` passes them
in memory it cannot read; the same choice as Docker's and Flatpak's profiles)."""

_CLONE_THREAD = 0x00010000  # <linux/sched.h>


@functools.cache
def seccomp_program() -> bytes | None:
    """The compiled seccomp filter (BPF), or None where libseccomp cannot be loaded."""
    try:
        import pyseccomp
    except (ImportError, OSError):  # not installed, or libseccomp.so.2 missing
        return None
    try:
        flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        for name in SECCOMP_DENIED:
            with contextlib.suppress(OSError):  # a call this libseccomp does not know (EINVAL)
                flt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
        # clone without CLONE_THREAD is a new process
        no_thread = pyseccomp.Arg(0, pyseccomp.MASKED_EQ, _CLONE_THREAD, 0)
        flt.add_rule(pyseccomp.ERRNO(errno.EPERM), "clone", no_thread)
        flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
        with tempfile.TemporaryFile() as f:
            flt.export_bpf(f)
            f.seek(0)
            return f.read()
    except OSError:
        return None


def _python() -> tuple[str, str]:
    """The real interpreter (not a venv's link to it) and its installation prefix."""
    exe = os.path.realpath(sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


def bwrap_args(limits: Limits, seccomp_fd: int | None) -> list[str]:
    """bubblewrap's arguments (without the command): the view described in the module
    docstring. Mounts are applied in order, so the root is remounted read-only last."""
    exe, prefix = _python()
    args = [
        "--unshare-all",
        "--unshare-user",  # implied when unprivileged; explicit for root
        "--disable-userns",
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
        # The child is the namespace's init instead of a reaper bubblewrap would add: one
        # process fewer per call (~15 ms). The kernel still delivers its limits' SIGKILL and
        # the parent-death SIGKILL to an init, and the child installs its own SIGALRM handler.
        "--as-pid-1",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    # merged-/usr systems link /bin, /lib... into /usr; others have them as directories
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    bound = ["/usr"]
    for path in (prefix, os.path.dirname(exe)):
        if not any(path == b or path.startswith(b + "/") for b in bound):
            args += ["--ro-bind", path, path]
            bound.append(path)
    args += [
        "--ro-bind",
        str(CHILD),
        SANDBOX_CHILD,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(limits.disk_bytes),
        "--tmpfs",
        SANDBOX_DIR,
        # The child's uid maps to the caller's; when that is root, it owns /proc/sys: without
        # this, it could write the host's sysctls (kernel.core_pattern among them).
        "--remount-ro",
        "/proc",
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        SANDBOX_DIR,
    ]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return args


@dataclass(frozen=True)
class Isolation:
    """How the child is confined by the kernel on this machine."""

    name: str
    """``bwrap``, ``unshare`` or ``none``."""
    layers: tuple[str, ...]
    """What the kernel enforces."""
    warning: str | None
    """The one line printed when this is weaker than bubblewrap's sandbox."""
    program: str = ""
    """The wrapper's path (``bwrap`` or ``unshare``)."""
    seccomp: bytes | None = None
    """The filter bubblewrap loads (:func:`seccomp_program`), when it could."""


BWRAP = Isolation("bwrap", ("user_ns", "pid_ns", "mount_ns_readonly", "net_ns", "ipc_ns"), None)
UNSHARE = Isolation(
    "unshare",
    ("user_ns", "pid_ns", "net_ns", "ipc_ns"),
    "rlhf-lab: warning: bubblewrap (bwrap) cannot start a sandbox here; doctest examples run "
    "with PID and network namespaces but a filesystem guarded only by an audit hook "
    "(see docs/sandbox.md)",
)
NONE = Isolation(
    "none",
    (),
    "rlhf-lab: warning: the kernel refuses user namespaces here; doctest examples are confined "
    "only by an audit hook and resource limits, a weaker sandbox (see docs/sandbox.md)",
)
NO_SECCOMP_WARNING = (
    "rlhf-lab: warning: libseccomp cannot be loaded here; doctest examples run under bubblewrap "
    "without a seccomp filter: new processes are refused only by an audit hook "
    "(see docs/sandbox.md)"
)
_UNSHARE_ARGS = ("--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--net", "--ipc")


@contextlib.contextmanager
def _filter_fd(program: bytes | None) -> Iterator[int | None]:
    """A pipe holding the seccomp filter for ``bwrap --seccomp FD`` (it fits the pipe's
    buffer, so it is written whole before bubblewrap starts)."""
    if program is None:
        yield None
        return
    read_end, write_end = os.pipe()
    try:
        with open(write_end, "wb", closefd=True) as w:
            w.write(program)
        yield read_end
    finally:
        os.close(read_end)


def _starts(cmd: list[str], fd: int | None = None) -> bool:
    try:
        run = subprocess.run(
            cmd, capture_output=True, timeout=10, env={}, pass_fds=() if fd is None else (fd,)
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return run.returncode == 0


def _probe() -> list[str]:
    """The smallest run of the child's interpreter, to see whether a wrapper can start it."""
    return [_python()[0], "-I", "-S", "-c", "pass"]


def _probe_bwrap(bwrap: str) -> Isolation | None:
    for program in dict.fromkeys([seccomp_program(), None]):  # with the filter if it loads
        with _filter_fd(program) as fd:
            if _starts([bwrap, *bwrap_args(DEFAULT_LIMITS, fd), *_probe()], fd):
                if program:
                    layers, warning = (*BWRAP.layers, "seccomp"), None
                else:
                    layers, warning = BWRAP.layers, NO_SECCOMP_WARNING
                return Isolation("bwrap", layers, warning, bwrap, program)
    return None


@functools.cache
def isolation() -> Isolation:
    """The strongest confinement that can start here (tried once per process); prints its
    warning line, once, when it is weaker than bubblewrap with seccomp."""
    choice = NONE
    if sys.platform.startswith("linux"):
        bwrap, unshare = shutil.which("bwrap"), shutil.which("unshare")
        if bwrap and (sandboxed := _probe_bwrap(bwrap)):
            choice = sandboxed
        elif unshare and _starts([unshare, *_UNSHARE_ARGS, *_probe()]):
            choice = dataclasses.replace(UNSHARE, program=unshare)
    if choice.warning:
        print(choice.warning, file=sys.stderr)
    return choice


def child_command(how: Isolation, limits: Limits, seccomp_fd: int | None) -> list[str]:
    """The command that starts the child under ``how``."""
    exe, _ = _python()
    if how.name == "bwrap":
        return [how.program, *bwrap_args(limits, seccomp_fd), exe, "-I", "-S", SANDBOX_CHILD]
    cmd = [exe, "-I", "-S", str(CHILD)]
    return [how.program, *_UNSHARE_ARGS, *cmd] if how.name == "unshare" else cmd


def _result(stdout: bytes, nonce: str, status: str, layers: tuple[str, ...]) -> DoctestResult:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        if line.startswith(nonce + " "):
            try:
                data = json.loads(line[len(nonce) + 1 :])
                outcomes = tuple(str(o) for o in data["outcomes"])
            except (ValueError, KeyError, TypeError):
                break
            return DoctestResult(outcomes.count("pass"), len(outcomes), outcomes, status, layers)
    return DoctestResult(0, 0, (), status if status != "ok" else "no_result", layers)


def run_doctests(
    docstring: str,
    code: str,
    *,
    name: str,
    setup: str = "",
    limits: Limits = DEFAULT_LIMITS,
    audit_hook: bool = True,
) -> DoctestResult | None:
    """Run ``docstring``'s examples against ``name`` defined by ``setup`` + ``code`` in a
    confined child (module docstring); None when no example uses ``name``. ``audit_hook=False``
    exists for the tests that show the kernel's layers hold on their own."""
    if not calls_function(docstring, name):
        return None
    nonce = secrets.token_hex(16)
    job = {
        "setup": setup,
        "code": code,
        "name": name,
        "docstring": docstring,
        "per_example_s": limits.per_example_s,
        "cpu_s": limits.cpu_s,
        "memory_bytes": limits.memory_bytes,
        "output_bytes": limits.output_bytes,
        "audit_hook": audit_hook,
        "nonce": nonce,
    }
    how = isolation()
    layers = (*how.layers, *BASE_LAYERS, *(("audit_hook",) if audit_hook else ()))
    with tempfile.TemporaryDirectory(prefix="rlhf-doctest-", ignore_cleanup_errors=True) as tmp:
        # Under bubblewrap this directory is not in the child's view: it only holds the files
        # behind its stdout and stderr. Otherwise it is also the child's working directory.
        home = SANDBOX_DIR if how.name == "bwrap" else tmp
        env = {"PATH": os.defpath, "HOME": home, "LC_ALL": "C.UTF-8"}
        # Read back through the descriptors opened here, never by path: the child may replace
        # the files in its directory (with a FIFO, say, that would block a reopen).
        with (
            open(Path(tmp, "stdout"), "w+b") as out,
            open(Path(tmp, "stderr"), "wb") as err,
            _filter_fd(how.seccomp) as fd,
        ):
            proc = subprocess.Popen(
                child_command(how, limits, fd),
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=tmp,
                env=env,
                pass_fds=() if fd is None else (fd,),
                start_new_session=True,  # its own process group, killed whole on timeout
            )
            status = "ok"
            try:
                proc.communicate(json.dumps(job).encode(), timeout=limits.wall_s)
            except subprocess.TimeoutExpired:
                status = "timeout"
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # killed by a signal: a negative code, or 128 + the signal from bubblewrap
            if status == "ok" and (proc.returncode < 0 or proc.returncode > 128):
                status = "killed"
            out.seek(0)
            stdout = out.read(limits.output_bytes + 1)  # never more than the cap
    result = _result(stdout, nonce, status, layers)
    if result.status == "no_result" and len(stdout) >= limits.output_bytes:
        return DoctestResult(0, 0, (), "output_capped", layers)
    return result
