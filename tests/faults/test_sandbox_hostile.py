"""Hostile docstring examples against the doctest sandbox: each attack must fail, its effect
must not happen, and this process (the sandbox's parent) must survive.

Every attack is written so that its last example passes only if the attack worked (it runs
without error, or prints the stolen value), then the function is called once more (the
canary: the child still works after a refused attack). Each attack runs twice under
bubblewrap: with every layer, and with the audit hook off, which shows that the kernel's layers
(namespaces, read-only view, seccomp) stop it on their own. The fallback (no namespaces) is
tested at the end: its warning, and the audit hook still refusing the plain attacks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rlhf_lab.tasks import sandbox
from rlhf_lab.tasks.sandbox import Limits, run_doctests

from ..conftest import REPO

ADD = "def add(xs, k):\n    return [x + k for x in xs]"
CANARY = ">>> add([1], 1)\n[2]"
SECRET = "sk-hostile-doctest-4711"
MARKER = ".rlhf-lab-output"  # the file that makes `analyze_rewards --out` adopt a folder
VICTIM_ARG = "61.4321"  # `sleep 61.4321`: a process outside the sandbox, found by its argument
LIMITS = Limits(wall_s=5, per_example_s=0.5, cpu_s=1, memory_bytes=256 * 2**20)


@dataclass
class World:
    """What the attacks aim at, and how to tell whether one landed."""

    victim: subprocess.Popen
    usr1: list[int]  # SIGUSR1s this process received
    accepted: list[int]  # connections the loopback server accepted
    port: int
    cwd: Path  # this process's working directory during the test
    escape: Path  # the parent of a fallback child's working directory
    pidfile: Path  # holds the victim's pid, outside the working directory

    def fields(self) -> dict[str, object]:
        return {
            "victim": self.victim.pid,
            "parent": os.getpid(),
            "target": str(self.cwd / MARKER),
            "dir": str(self.cwd),
            "port": self.port,
            "secret": SECRET,
            "readme": str(REPO / "README.md"),
            "readme_head": (REPO / "README.md").read_text()[:20],
            "repo": str(REPO),
            "pidfile": str(self.pidfile),
        }

    def assert_unharmed(self) -> None:
        assert self.victim.poll() is None, "a process outside the sandbox was killed"
        assert self.usr1 == [], "the sandbox's parent received a signal"
        assert self.accepted == [], "the sandbox reached a loopback server"
        assert list(self.cwd.iterdir()) == [], "the sandbox created files outside its directory"
        assert self.pidfile.read_text() == str(self.victim.pid), "the sandbox changed a file"
        assert not (self.escape / MARKER).exists(), "the sandbox escaped its directory"


@pytest.fixture
def world(tmp_path, monkeypatch) -> Iterator[World]:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    escape = Path(tempfile.gettempdir())
    assert not (escape / MARKER).exists()
    victim = subprocess.Popen(["sleep", VICTIM_ARG], start_new_session=True)
    monkeypatch.setenv("RLHF_LAB_VICTIM", str(victim.pid))
    pidfile = tmp_path / "victim.pid"
    pidfile.write_text(str(victim.pid))
    usr1: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: usr1.append(signum))
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed at teardown
                return
            accepted.append(1)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    w = World(victim, usr1, accepted, server.getsockname()[1], cwd, escape, pidfile)
    try:
        yield w
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
        server.close()
        thread.join(timeout=5)
        signal.signal(signal.SIGUSR1, previous)
        victim.kill()
        victim.wait()
        (escape / MARKER).unlink(missing_ok=True)  # only if an attack made it (then it failed)


Example = str | tuple[str, str]
"""One ``>>>`` example: its source, or (source, expected output)."""


def _steal(expr: str) -> list[Example]:
    """An attack that passes only if ``expr`` (which may raise) is true."""
    return ["import os", (expr, "True")]


SIGNALS: dict[str, list[Example]] = {
    "kill_getppid": ["import os, signal", "os.kill(os.getppid(), signal.SIGKILL)"],
    "kill_parent_pid": ["import os, signal", "os.kill({parent}, signal.SIGUSR1)"],
    "kill_outside_pid": ["import os, signal", "os.kill({victim}, signal.SIGKILL)"],
    "kill_pid_from_env": [
        "import os, signal",
        "os.kill(int(os.environ['RLHF_LAB_VICTIM']), signal.SIGKILL)",
    ],
    "kill_pid_from_file": [
        "import os, signal",
        "os.kill(int(open('{pidfile}').read()), signal.SIGKILL)",
    ],
    "killpg_outside": ["import os, signal", "os.killpg({victim}, signal.SIGKILL)"],
    "kill_found_in_proc": [
        "import os",
        "def hunt():\n"
        "    for p in os.listdir('/proc'):\n"
        "        try:\n"
        "            if b'{victim_arg}' in open('/proc/' + p + '/cmdline', 'rb').read():\n"
        "                os.kill(int(p), 9)\n"
        "                return True\n"
        "        except OSError:\n"
        "            pass\n"
        "    return False",
        ("hunt()", "True"),
    ],
    "pidfd": ["import os, signal", "signal.pidfd_send_signal(os.pidfd_open({victim}), 9)"],
    "subprocess_kill": ["import subprocess", "subprocess.run(['kill', '-9', '{victim}'])"],
    "os_system_kill": ["import os", ("os.system('kill -USR1 {parent}')", "0")],
    "ctypes_kill": ["import ctypes", ("ctypes.CDLL(None).kill({victim}, 9)", "0")],
}

FILES: dict[str, list[Example]] = {
    "open": ["open('{target}', 'w').close()"],
    "os_open": ["import os", "os.close(os.open('{target}', os.O_CREAT | os.O_WRONLY))"],
    "mknod": ["import os, stat", "os.mknod('{target}', stat.S_IFREG | 0o644)"],
    "mkfifo": ["import os", "os.mkfifo('{target}')"],
    "mkdir": ["import os", "os.mkdir('{target}')"],
    "makedirs": ["import os", "os.makedirs('{target}/sub')"],
    "symlink": ["import os", "os.symlink('/etc/passwd', '{target}')"],
    "hard_link": ["import os", "open('f', 'w').close()", "os.link('f', '{target}')"],
    "rename": ["import os", "open('f', 'w').close()", "os.rename('f', '{target}')"],
    "shutil_copy": ["import shutil", "open('f', 'w').close()", "_ = shutil.copy('f', '{target}')"],
    "pathlib_touch": ["import pathlib", "pathlib.Path('{target}').touch()"],
    "pathlib_write": ["import pathlib", ("pathlib.Path('{target}').write_text('x')", "1")],
    "tempfile_in_dir": ["import tempfile", "_ = tempfile.mkstemp(dir='{dir}')"],
    # writes the value it read (harmless if it got through): a root-owned /proc/sys is the
    # host's kernel settings (kernel.core_pattern runs a program as root on a crash)
    "host_sysctl": [
        "v = open('/proc/sys/vm/swappiness').read()",
        ("open('/proc/sys/vm/swappiness', 'w').write(v) > 0", "True"),
    ],
    "relative_escape": ["open('../" + MARKER + "', 'w').close()"],
    "subprocess_touch": ["import subprocess", "subprocess.run(['touch', '{target}'], check=True)"],
    "os_system_touch": ["import os", ("os.system('touch {target}')", "0")],
    "ctypes_open": [
        "import ctypes",
        ("ctypes.CDLL(None).open(b'{target}', 0o101, 0o644) >= 0", "True"),
    ],
}

PROCESSES: dict[str, list[Example]] = {
    "fork_bomb": ["import os", "while True: os.fork()"],
    "subprocess_bomb": [
        "import subprocess, sys",
        "while True: subprocess.Popen([sys.executable, '-c', 'while 1: pass'])",
    ],
    "posix_spawn": ["import os", "os.posix_spawn('/bin/sh', ['sh', '-c', 'sleep 60'], {{}})"],
    "thread_bomb": [
        "import threading, time",
        "while True: threading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
    ],
}

MEMORY_AND_TIME: dict[str, list[Example]] = {
    "one_huge_allocation": ["x = bytearray(8 * 2**30)"],
    "growing_list": ["xs = []", "while True: xs.append(bytearray(2**24))"],
    "python_loop": ["while True: pass"],
    "alarm_ignored": [
        "import signal",
        "_ = signal.signal(signal.SIGALRM, signal.SIG_IGN)",
        "while True: pass",
    ],
    "c_loop": ["sum(range(10**13))"],
}

NETWORK: dict[str, list[Example]] = {
    "socket": [
        "import socket",
        "socket.create_connection(('127.0.0.1', {port}), timeout=1).close()",
    ],
    "urllib": [
        "import urllib.request",
        "_ = urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)",
    ],
    "ctypes_socket": ["import ctypes", ("ctypes.CDLL(None).socket(2, 1, 0) >= 0", "True")],
}

SECRETS: dict[str, list[Example]] = {
    "environ": _steal("'{secret}' in str(os.environ)"),
    "getenv": _steal("os.getenv('OPENAI_API_KEY') == '{secret}'"),
    "parent_environ": _steal("b'{secret}' in open('/proc/{parent}/environ', 'rb').read()"),
    "any_environ_in_proc": [
        "import os",
        "def scan():\n"
        "    for p in os.listdir('/proc'):\n"
        "        try:\n"
        "            if b'{secret}' in open('/proc/' + p + '/environ', 'rb').read():\n"
        "                return True\n"
        "        except OSError:\n"
        "            pass\n"
        "    return False",
        ("scan()", "True"),
    ],
    "repo_file": _steal("open('{readme}').read(20) == {readme_head!r}"),
    "repo_listing": _steal("'README.md' in os.listdir('{repo}')"),
    "user_home": _steal("len(os.listdir(os.path.expanduser('~root'))) > 1"),
}

CORPUS = {
    f"{group}/{name}": attack
    for group, attacks in [
        ("signal", SIGNALS),
        ("file", FILES),
        ("process", PROCESSES),
        ("resource", MEMORY_AND_TIME),
        ("network", NETWORK),
        ("secret", SECRETS),
    ]
    for name, attack in attacks.items()
}


def _doc(attack: list[Example], world: World) -> str:
    fields = {**world.fields(), "victim_arg": VICTIM_ARG}
    lines = []
    for ex in attack:
        source, want = (ex, "") if isinstance(ex, str) else ex
        lines.append(">>> " + source.format(**fields).replace("\n", "\n... "))
        lines += [want] if want else []
    return "\n".join([*lines, CANARY])


def _attack(attack: list[Example], world: World, *, audit_hook: bool) -> sandbox.DoctestResult:
    result = run_doctests(
        _doc(attack, world), ADD, name="add", limits=LIMITS, audit_hook=audit_hook
    )
    assert result is not None
    world.assert_unharmed()
    n = len(attack)
    # the attack failed: its example did not pass, or the child was stopped by a limit
    if result.status == "ok":
        assert len(result.outcomes) == n + 1 and result.outcomes[n - 1] != "pass", result
        assert result.outcomes[n] == "pass", result  # the canary: refusing did not break it
    else:
        assert result.status in {"killed", "timeout"} and result.passed == 0, result
    return result


@pytest.fixture
def bubblewrap() -> None:
    if sandbox.isolation().name != "bwrap":
        pytest.skip("bubblewrap cannot start a sandbox here (make test installs it as root)")


RUNS = [
    pytest.param(name, hook, id=f"{name}-{'all_layers' if hook else 'kernel_only'}")
    for name in sorted(CORPUS)
    for hook in (True, False)
    # the audit hook plays no part against memory and time: run those once, without it
    if not (hook and name.startswith("resource/"))
]


@pytest.mark.usefixtures("bubblewrap")
@pytest.mark.parametrize(("name", "audit_hook"), RUNS)
def test_attack_fails_and_the_parent_survives(name, audit_hook, world):
    seccomp = "seccomp" in sandbox.isolation().layers
    if not (audit_hook or seccomp):
        # as root, with neither, a fork bomb would be a real one (RLIMIT_NPROC spares root)
        pytest.skip("the kernel-only runs need the seccomp layer (libseccomp2)")
    result = _attack(CORPUS[name], world, audit_hook=audit_hook)
    assert "mount_ns_readonly" in result.layers and ("seccomp" in result.layers) is seccomp
    assert ("audit_hook" in result.layers) is audit_hook


@pytest.mark.usefixtures("bubblewrap")
def test_the_kernel_layers_are_in_place(world):
    """What the child sees with the audit hook off: seccomp in filter mode (where libseccomp
    loads), its own PID
    namespace, a root with nothing but the interpreter's files, ``PATH``, ``HOME`` and ``LC_ALL``
    (and the ``PWD`` bubblewrap sets) in its environment; threads still start."""
    seccomp = "seccomp" in sandbox.isolation().layers
    prefix = os.path.realpath(sys.base_prefix).split("/")[1]
    root = sorted({"dev", "doctest_child.py", "proc", "sandbox", "usr", prefix})
    checks = [
        "import os",
        ("open('/proc/self/status').read().count('Seccomp:\\t2')", str(int(seccomp))),
        ("os.getpid() < 10", "True"),
        (
            "sorted(set(os.listdir('/')) - {{'bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32'}})",
            repr(root),
        ),
        ("sorted(os.environ)", "['HOME', 'LC_ALL', 'PATH', 'PWD']"),
        ("os.getcwd()", repr(sandbox.SANDBOX_DIR)),
        "import threading; threading.Thread(target=int).start()",  # threads are no new process
    ]
    result = run_doctests(_doc(checks, world), ADD, name="add", limits=LIMITS, audit_hook=False)
    assert result.outcomes == ("pass",) * (len(checks) + 1)


# --- the fallbacks ------------------------------------------------------------------------------


@pytest.fixture
def without(monkeypatch, capsys):
    """``without("bwrap")``: re-probe the isolation as if those programs were not installed;
    returns the chosen isolation and what the probe printed on stderr."""
    which = shutil.which

    def probe(*missing: str) -> tuple[sandbox.Isolation, str]:
        monkeypatch.setattr(
            shutil, "which", lambda cmd, *a, **k: None if cmd in missing else which(cmd, *a, **k)
        )
        sandbox.isolation.cache_clear()
        capsys.readouterr()
        how = sandbox.isolation()
        sandbox.isolation()  # cached: the warning is printed once per process
        return how, capsys.readouterr().err

    yield probe
    sandbox.isolation.cache_clear()  # the next caller probes the real machine again


PLAIN_ATTACKS = [
    "signal/kill_parent_pid",
    "signal/kill_outside_pid",
    "signal/kill_pid_from_env",
    "signal/kill_pid_from_file",
    "signal/subprocess_kill",
    "file/open",
    "file/os_open",
    "file/mkdir",
    "file/symlink",
    "file/relative_escape",
    "file/subprocess_touch",
    "process/fork_bomb",
    "network/socket",
    "secret/environ",
    "secret/parent_environ",
    "secret/repo_file",
    "resource/one_huge_allocation",
]
"""What the audit hook and the resource limits refuse without the kernel's help."""


def test_without_namespaces_a_warning_and_the_audit_hook_still_refuses(without, world):
    how, err = without("bwrap", "unshare")
    assert how is sandbox.NONE
    assert err.splitlines() == [sandbox.NONE.warning] and "weaker" in err
    for name in PLAIN_ATTACKS:
        result = _attack(CORPUS[name], world, audit_hook=True)
        assert result.layers == ("clean_env", "rlimits", "audit_hook"), name


def test_without_bubblewrap_unshare_still_isolates_processes_and_network(without, world):
    if shutil.which("unshare") is None:
        pytest.skip("util-linux unshare is not installed")
    how, err = without("bwrap")
    if how.name != "unshare":
        pytest.skip("the kernel refuses user namespaces here")
    assert err.splitlines() == [sandbox.UNSHARE.warning]
    # the kernel alone (no audit hook): the outside processes and the loopback are not there
    for name in ["signal/kill_parent_pid", "signal/kill_outside_pid", "network/socket"]:
        result = _attack(CORPUS[name], world, audit_hook=False)
        assert result.layers[:2] == ("user_ns", "pid_ns") and "seccomp" not in result.layers


@pytest.mark.usefixtures("bubblewrap")
def test_without_libseccomp_bubblewrap_still_runs_and_says_seccomp_is_off(without, monkeypatch):
    monkeypatch.setattr(sandbox, "seccomp_program", lambda: None)
    how, err = without()
    assert (how.name, how.seccomp) == ("bwrap", None)
    assert err.splitlines() == [sandbox.NO_SECCOMP_WARNING]
    result = run_doctests(">>> add([1], 1)\n[2]", ADD, name="add")
    assert result.outcomes == ("pass",) and "seccomp" not in result.layers
    assert "mount_ns_readonly" in result.layers


def _running(comm: str) -> list[str]:
    """Live (not zombie) processes whose name is ``comm``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            stat = Path("/proc", pid, "stat").read_text()
            name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
            found += [pid] if name == comm and state not in "ZX" else []
    return found


@pytest.mark.usefixtures("bubblewrap")
def test_the_wall_clock_leaves_no_process_behind(world):
    # ignores its alarm and sleeps: only the wall clock ends it, by killing bubblewrap
    name = f"rlhf{os.getpid() % 10**6}z"
    attack: list[Example] = [
        "import ctypes, signal, time",
        (f"ctypes.CDLL(None).prctl(15, b'{name}', 0, 0, 0)", "0"),  # PR_SET_NAME: find it later
        "_ = signal.signal(signal.SIGALRM, signal.SIG_IGN)",
        "time.sleep(60)",
    ]
    doc = _doc(attack, world)
    limits = Limits(wall_s=1.5, per_example_s=60)
    result = run_doctests(doc, ADD, name="add", limits=limits, audit_hook=False)
    assert (result.status, result.score) == ("timeout", 0.0)
    # the kernel's parent-death SIGKILL is asynchronous: give it a moment, not a process
    deadline = time.monotonic() + 5
    while (left := _running(name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []
    world.assert_unharmed()
