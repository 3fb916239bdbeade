"""Run a docstring's ``>>>`` examples against its function, never in the trainer's process.

    result = run_doctests(docstring, code, setup="from typing import List", name="add")
    result.score        # fraction of examples that passed; None result: no example to run

Each call starts one child process (:mod:`rlhf_lab.tasks.doctest_child`) and confines it:

* a fresh interpreter, ``python -I -S``: isolated mode (no ``PYTHON*`` variables, no user site,
  no script or current directory on ``sys.path``) and no ``site``, so only the standard
  library is importable — not the project, not the virtual environment's packages;
* its working directory a new temporary directory, removed afterwards; its environment only
  ``PATH``, ``HOME`` (that directory) and ``LC_ALL``;
* resource limits it sets on itself before the examples run (``resource.setrlimit``): CPU
  seconds, address space, largest file (its stdout and stderr are files in that directory,
  so this caps them), no new processes (``RLIMIT_NPROC``, which Linux does not apply to root);
* no network: when ``unshare -rn`` works here (an unprivileged user and network namespace) the
  child runs in an empty network namespace; in every case an audit hook (PEP 578) installed in
  the child before any of the row's code runs refuses sockets, subprocesses, ``os.system`` /
  ``exec`` / ``fork``, ``ctypes``, frame inspection, writes outside the working directory and
  reads outside it and the standard library (the repository included);
* a wall-clock timeout on the whole child (its process group is killed) and a SIGALRM timer
  per example, so one endless example fails alone.

The result line the child prints starts with a random nonce, so an example that prints a
result line of its own does not count. The nonce is in the child's memory, though, and
``sys._getframe`` is refused but a traceback's frames are not: code written to walk the
interpreter's frames could still forge its score. The sandbox confines what examples can do to
the machine; it does not make a determined reply honest (``analyze_rewards --samples`` shows
what PPO learned). Nor does it defend against code that breaks CPython itself.
"""

from __future__ import annotations

import contextlib
import doctest
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
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("doctest_child.py")
"""The child program, shipped in the package and run by path (never imported)."""


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


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class DoctestResult:
    """What running one docstring's examples gave."""

    passed: int
    total: int
    outcomes: tuple[str, ...]
    """Per example: ``pass``, ``fail`` or ``error:<ExceptionType>`` (a refused action is
    ``error:Blocked``, a timed-out example ``error:TimeoutError``)."""
    status: str
    """``ok``; ``timeout`` (the wall clock ran out); ``killed`` (a limit's signal, e.g.
    SIGXCPU); ``output_capped`` (stdout reached :attr:`Limits.output_bytes`, so no result
    line fit: CPython ignores SIGXFSZ, the write fails instead); ``no_result`` (the child
    ended without a valid result line)."""

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


@functools.cache
def network_isolation() -> str:
    """``"unshare"`` when ``unshare -rn`` can start a process here, else ``"audit_hook"``."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return "audit_hook"
    try:
        ok = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode
    except (OSError, subprocess.SubprocessError):
        return "audit_hook"
    return "unshare" if ok == 0 else "audit_hook"


def child_command() -> list[str]:
    """The command that starts the child (network namespace first when available)."""
    cmd = [sys.executable, "-I", "-S", str(CHILD)]
    if network_isolation() == "unshare":
        return ["unshare", "-rn", *cmd]
    return cmd


def _result(stdout: bytes, nonce: str, status: str) -> DoctestResult:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        if line.startswith(nonce + " "):
            try:
                data = json.loads(line[len(nonce) + 1 :])
                outcomes = tuple(str(o) for o in data["outcomes"])
            except (ValueError, KeyError, TypeError):
                break
            return DoctestResult(outcomes.count("pass"), len(outcomes), outcomes, status)
    return DoctestResult(0, 0, (), status if status != "ok" else "no_result")


def run_doctests(
    docstring: str,
    code: str,
    *,
    name: str,
    setup: str = "",
    limits: Limits = DEFAULT_LIMITS,
) -> DoctestResult | None:
    """Run ``docstring``'s examples against ``name`` defined by ``setup`` + ``code`` in a
    confined child (module docstring); None when no example uses ``name``."""
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
        "nonce": nonce,
    }
    with tempfile.TemporaryDirectory(prefix="rlhf-doctest-", ignore_cleanup_errors=True) as tmp:
        env = {"PATH": os.defpath, "HOME": tmp, "LC_ALL": "C.UTF-8"}
        # Read back through the descriptors opened here, never by path: the child may replace
        # the files in its directory (with a FIFO, say, that would block a reopen).
        with (
            open(Path(tmp, "stdout"), "w+b") as out,
            open(Path(tmp, "stderr"), "wb") as err,
        ):
            proc = subprocess.Popen(
                child_command(),
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                cwd=tmp,
                env=env,
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
            if status == "ok" and proc.returncode < 0:
                status = "killed"
            out.seek(0)
            stdout = out.read(limits.output_bytes + 1)  # never more than the cap
    result = _result(stdout, nonce, status)
    if result.status == "no_result" and len(stdout) >= limits.output_bytes:
        return DoctestResult(0, 0, (), "output_capped")
    return result
