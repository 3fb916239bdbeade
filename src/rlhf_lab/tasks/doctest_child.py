"""The child program of :mod:`rlhf_lab.tasks.sandbox`: run one docstring's ``>>>`` examples.

Run as ``python -I -S doctest_child.py`` (isolated: no user site, no PYTHON* variables, no
current directory on ``sys.path``, no ``site``), so it imports the standard library only and
never the project. Under bubblewrap it is bound read-only at ``/doctest_child.py`` and its
working directory is a tmpfs (``docs/sandbox.md``). It reads one job, JSON on stdin
(``setup``, ``code``, ``name``, ``docstring``, ``per_example_s``, ``cpu_s``, ``memory_bytes``,
``output_bytes``, ``audit_hook``, ``nonce``), sets its own resource limits (CPU seconds,
address space, largest file written: its stdout and stderr are files, so this caps them; no
new processes), then, before any of the job's code runs, installs an audit hook (PEP 578; the
layer inside the kernel's) that refuses sockets, new processes, native code (ctypes), frame
inspection, and any file access outside its working directory except reading the standard
library. It executes ``setup`` and ``code``, runs the examples with :mod:`doctest` against the
function ``name``, each under a SIGALRM timer, and prints ``<nonce> <json>`` as its last line:
``{"passed", "total", "outcomes"}`` (outcome per example: ``pass``, ``fail`` or
``error:<ExceptionType>``).

Only the standard library: the project never imports this file, it only runs it.
"""

import contextlib
import doctest
import json
import os
import resource
import signal
import sys

BLOCKED_EVENT_PREFIXES = (
    "socket.",
    "subprocess.",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "os.kill",
    "os.killpg",
    "pty.",
    "ctypes.",
    "_posixsubprocess.",
    "sys._getframe",
    "sys._current_frames",
    "webbrowser.",
)
"""Audit events refused outright: network, processes, native code, and frame access (the
frames hold the nonce that proves a result line came from this program, not the examples)."""

BLOCKED_MODULES = frozenset(
    {
        "socket",
        "_socket",
        "ssl",
        "_ssl",
        "subprocess",
        "_posixsubprocess",
        "ctypes",
        "_ctypes",
        "multiprocessing",
        "_multiprocessing",
        "pty",
        "select",
        "selectors",
        "asyncio",
    }
)
"""Modules an example may not import (the audit ``import`` event)."""

PATH_EVENTS = frozenset(
    {
        "os.remove",
        "os.rename",
        "os.replace",
        "os.rmdir",
        "os.mkdir",
        "os.chmod",
        "os.chown",
        "os.truncate",
        "os.utime",
        "os.link",
        "os.symlink",
        "os.chdir",
        "os.listdir",
        "os.scandir",
        "shutil.copyfile",
        "shutil.copymode",
        "shutil.copystat",
        "shutil.copytree",
        "shutil.move",
        "shutil.rmtree",
        "shutil.chown",
        "glob.glob",
        "os.chflags",
        "os.lchown",
    }
)
"""Audit events whose path arguments must lie in the working directory."""

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class Blocked(PermissionError):
    """Raised by the audit hook: the example tried something the sandbox refuses."""


def _install_hook(workdir: str) -> None:
    workdir = os.path.realpath(workdir)
    stdlib = [os.path.realpath(p) for p in sys.path if p and os.path.isabs(p)]
    readable = (*stdlib, workdir, "/dev/null")

    def inside(path: object, roots: tuple) -> bool:
        if isinstance(path, int):
            return True  # an already open descriptor (stdout: size-capped by RLIMIT_FSIZE)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            path = os.fspath(path) if hasattr(path, "__fspath__") else None
            if path is None:
                return True  # not a path argument
        real = os.path.realpath(os.path.join(workdir, path))
        return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)

    def hook(event: str, args: tuple) -> None:
        if event.startswith(BLOCKED_EVENT_PREFIXES):
            raise Blocked(f"sandbox: {event} is not allowed")
        if event == "import" and args and str(args[0]).split(".")[0] in BLOCKED_MODULES:
            raise Blocked(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode, flags = (*args, None, None, None)[:3]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if not inside(path, (workdir,) if writes else readable):
                raise Blocked(f"sandbox: open({path!r}) outside the working directory")
        elif event in PATH_EVENTS:
            for arg in args:
                is_path = isinstance(arg, (str, bytes)) or hasattr(arg, "__fspath__")
                if is_path and not inside(arg, (workdir,)):
                    raise Blocked(f"sandbox: {event}({arg!r}) outside the working directory")

    sys.addaudithook(hook)


class _TimedRunner(doctest.DocTestRunner):
    """Records each example's outcome; a SIGALRM timer bounds each example's wall time."""

    def __init__(self, per_example_s: float) -> None:
        super().__init__(verbose=False, optionflags=doctest.ELLIPSIS)
        self.per_example_s = per_example_s
        self.outcomes: list = []

    def report_start(self, out, test, example):
        signal.setitimer(signal.ITIMER_REAL, self.per_example_s)

    def report_success(self, out, test, example, got):
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.outcomes.append("pass")

    def report_failure(self, out, test, example, got):
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.outcomes.append("fail")

    def report_unexpected_exception(self, out, test, example, exc_info):
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.outcomes.append(f"error:{exc_info[0].__name__}")


def _timeout(signum, frame):
    raise TimeoutError("example ran past its time limit")


def _limit(kind: int, value: int) -> None:
    # A hard limit already lower (ValueError): keep it.
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(kind, (value, value))


def main() -> None:
    job = json.loads(sys.stdin.read())
    nonce = job.pop("nonce")
    _limit(resource.RLIMIT_CPU, int(job["cpu_s"]))
    _limit(resource.RLIMIT_AS, int(job["memory_bytes"]))
    _limit(resource.RLIMIT_FSIZE, int(job["output_bytes"]))
    _limit(resource.RLIMIT_NPROC, 0)  # no fork (not enforced for root: the hook still is)
    _limit(resource.RLIMIT_CORE, 0)
    out = sys.__stdout__
    write = out.write  # bound before the examples run: they may replace sys.stdout
    signal.signal(signal.SIGALRM, _timeout)
    if job.get("audit_hook", True):  # off only in tests of the kernel's layers alone
        _install_hook(os.getcwd())
    outcomes: list = []
    try:
        globs: dict = {"__name__": "__sandbox__"}
        exec(compile(job["setup"] + "\n\n" + job["code"], "<function>", "exec"), globs)
        parser = doctest.DocTestParser()
        test = parser.get_doctest(job["docstring"], globs, job["name"], None, 0)
        runner = _TimedRunner(float(job["per_example_s"]))
        # doctest writes its report to `out`: drop it, only the outcomes matter
        runner.run(test, out=lambda text: None, clear_globs=False)
        outcomes = runner.outcomes
    except BaseException as exc:  # the setup/code failed: every example counts as failed
        outcomes = [f"error:{type(exc).__name__}"]
    signal.setitimer(signal.ITIMER_REAL, 0)
    result = {"passed": outcomes.count("pass"), "total": len(outcomes), "outcomes": outcomes}
    write("\n" + nonce + " " + json.dumps(result) + "\n")
    out.flush()
    os._exit(0)  # no atexit handlers, no finalisers the examples may have registered


if __name__ == "__main__":
    main()
