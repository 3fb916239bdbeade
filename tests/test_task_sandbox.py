"""The doctest sandbox: examples run in a confined child process, never in this one."""

from __future__ import annotations

import os
import sys

import pytest

from rlhf_lab import reward_components
from rlhf_lab.config import Params
from rlhf_lab.tasks import docstring as ds
from rlhf_lab.tasks import sandbox
from rlhf_lab.tasks.sandbox import Limits, run_doctests

from .conftest import REPO

ADD = "def add(xs, k):\n    return [x + k for x in xs]"


def run(doc: str, limits: Limits = sandbox.DEFAULT_LIMITS, setup: str = ""):
    return run_doctests(doc, ADD, name="add", setup=setup, limits=limits)


@pytest.fixture
def hook_only(monkeypatch):
    """No namespaces, no seccomp (the fallback): the audit hook alone must refuse it."""
    monkeypatch.setattr(sandbox, "isolation", lambda: sandbox.NONE)
    assert sandbox.child_command(sandbox.NONE, Limits(), None)[0] == os.path.realpath(
        sys.executable
    )


def test_passing_and_failing_examples():
    good = run("Add k.\n\n>>> add([1, 2], 1)\n[2, 3]\n>>> add([], 5)\n[]")
    assert (good.passed, good.total, good.outcomes, good.status) == (2, 2, ("pass", "pass"), "ok")
    assert good.score == 1.0
    mixed = run(">>> add([1], 1)\n[2]\n>>> add([1], 1)\n[3]\n>>> add(None, 1)\n[]")
    assert mixed.outcomes == ("pass", "fail", "error:TypeError") and mixed.score == 1 / 3


def test_setup_runs_first_and_examples_share_state():
    doc = ">>> xs = [1, 2]\n>>> add(xs, OFFSET)\n[11, 12]"
    assert run(doc, setup="OFFSET = 10").outcomes == ("pass", "pass")


def test_examples_that_never_call_the_function_are_no_evidence():
    assert run(">>> 1 + 1\n2") is None
    assert run("Adds k to each of xs.") is None
    assert run(">>> adder = 1\n>>> adder\n1") is None  # a longer name is not the function


def test_it_runs_in_another_process():
    doc = f">>> import os\n>>> os.getpid() == {os.getpid()}\nFalse\n>>> add([0], 0)\n[0]"
    assert run(doc).outcomes == ("pass", "pass", "pass")


def test_an_endless_example_times_out_alone():
    doc = ">>> add([1], 1)\n[2]\n>>> while True: pass\n>>> add([2], 1)\n[3]"
    result = run(doc, Limits(per_example_s=0.5))
    assert result.outcomes == ("pass", "error:TimeoutError", "pass") and result.status == "ok"


def test_the_wall_clock_kills_the_whole_child():
    # per-example timer longer than the wall clock: the parent kills the process group
    result = run(">>> add([1], 1)\n[2]\n>>> while True: pass", Limits(wall_s=1, per_example_s=60))
    assert (result.status, result.score) == ("timeout", 0.0)


def test_a_loop_in_c_hits_the_cpu_limit():
    # sum() over a huge range never returns to the interpreter, so SIGALRM cannot stop it
    limits = Limits(cpu_s=1, per_example_s=0.5, wall_s=60)
    result = run(">>> add([1], 1)\n[2]\n>>> sum(range(10**13))", limits)
    # util-linux 2.38's unshare exits 1 ("sigprocmask unblock failed") instead of re-raising
    # its child's signal, so the unshare fallback cannot tell a kill from an early exit
    killed = "no_result" if sandbox.isolation().name == "unshare" else "killed"
    assert (result.status, result.score) == (killed, 0.0)


def test_a_memory_bomb_hits_the_address_space_limit():
    result = run(">>> x = bytearray(8 * 2**30)\n>>> add([1], 1)\n[2]")
    assert result.outcomes == ("error:MemoryError", "pass")


@pytest.mark.usefixtures("hook_only")
@pytest.mark.parametrize(
    "attempt",
    [
        "import socket",
        "__import__('_socket')",
        "import subprocess",
        "import os; os.system('true')",
        "import os; os.fork()",
        "import ctypes",
        "import sys; sys._getframe(1)",
    ],
)
def test_network_processes_native_code_and_frames_are_refused(attempt):
    result = run(f">>> {attempt}\n>>> add([1], 1)\n[2]")
    assert result.outcomes == ("error:Blocked", "pass")


@pytest.mark.usefixtures("hook_only")
def test_files_outside_the_temporary_directory_are_refused(tmp_path):
    outside = tmp_path / "written.txt"
    doc = (
        f">>> open({str(outside)!r}, 'w').write('x')\n"
        f">>> open({str(REPO / 'README.md')!r}).read()\n"
        f">>> import os; os.listdir({str(REPO)!r})\n"
        ">>> open('scratch.txt', 'w').write('ok')\n2\n"  # its own temporary directory: fine
        ">>> open('scratch.txt').read()\n'ok'\n"
        ">>> add([1], 1)\n[2]"
    )
    result = run(doc)
    assert result.outcomes == ("error:Blocked",) * 3 + ("pass", "pass", "pass")
    assert not outside.exists()


def test_huge_output_is_capped_and_scores_zero():
    # a write to the real stdout (a file) stops at RLIMIT_FSIZE: no result line fits after it
    limits = Limits(output_bytes=4096)
    result = run(">>> import os; _ = os.write(1, b'x' * 10**6)\n>>> add([1], 1)\n[2]", limits)
    assert (result.status, result.score) == ("output_capped", 0.0)
    # what doctest itself captures is compared, not written: a wrong example, nothing more
    printed = run(">>> print('x' * 10**6)\nx\n>>> add([1], 1)\n[2]", limits)
    assert printed.outcomes == ("fail", "pass")


def test_a_forged_result_line_does_not_count():
    forged = '0123456789abcdef0123456789abcdef {"outcomes": ["pass", "pass", "pass"]}'
    doc = f">>> import os; _ = os.write(1, b'\\n{forged}\\n')\n>>> add([1], 1)\n[3]"
    result = run(doc)
    assert result.outcomes == ("pass", "fail")


def test_docstring_doctest_component_from_the_factory():
    params = Params.model_validate({"task": {"name": "docstring"}})
    fn = reward_components.build(["docstring/doctest"], params)["docstring/doctest"]
    row = {"id": "r", "prompt": [], "reference": "", "meta": {"code": ADD, "setup": ""}}
    replies = [
        "Add k to each of xs.\n\n>>> add([1, 2], 1)\n[2, 3]",
        "```python\n'''Add k.\n\n>>> add([1], 1)\n[5]\n'''\n```",  # fenced, quoted: cleaned
        "",
        "Add k to each item.",
    ]
    assert list(fn(replies, [row] * 4)) == [1.0, 0.0, 0.0, 0.0]
    assert "doctest" not in ds.DEFAULT_WEIGHTS


@pytest.mark.usefixtures("hook_only")  # under bubblewrap the file is not in the child's view
def test_replacing_its_stdout_file_neither_hangs_nor_loses_the_result():
    doc = ">>> import os; os.remove('stdout'); os.mkfifo('stdout')\n>>> add([1], 1)\n[2]"
    assert run(doc).outcomes == ("pass", "pass")


def test_a_system_call_libseccomp_does_not_know_is_skipped_not_fatal(monkeypatch):
    full = sandbox.seccomp_program()
    if full is None:
        pytest.skip("pyseccomp or libseccomp cannot be loaded here")
    monkeypatch.setattr(sandbox, "SECCOMP_DENIED", (*sandbox.SECCOMP_DENIED, "no_such_call"))
    sandbox.seccomp_program.cache_clear()
    try:
        assert sandbox.seccomp_program() == full  # the same filter, not none at all
    finally:
        sandbox.seccomp_program.cache_clear()
