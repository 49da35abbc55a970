"""The command line with the real architecture plugins installed (their examples, the README's embedding
example, per-arch options).  Run where every plugin is installed (tox ``all``): ``tests/core`` runs with no
plugin, on the toy architecture."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from klpcore.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI as a subprocess; never a traceback, always a documented exit code."""
    p = subprocess.run(
        [sys.executable, "-m", "klpcore", *args],
        capture_output=True,
        text=True,
        env=dict(env, OPENBLAS_NUM_THREADS="1"),
        timeout=120,
    )
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode in (0, 1, 2, 3), p.returncode
    return p


def call(*args: str) -> tuple[int, str, str]:
    """``main()`` in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    assert "Traceback" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(autouse=True)
def installed_plugins(monkeypatch):
    """The installed plugins, whatever the environment chose."""
    monkeypatch.delenv("KLPCORE_PLUGINS", raising=False)
    monkeypatch.delenv("KLPCORE_LOAD_PLUGINS", raising=False)


def _real_env() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("KLPCORE_PLUGINS", "KLPCORE_LOAD_PLUGINS"):
        env.pop(k, None)
    return env


def test_first_run_and_an_example_per_installed_arch(tmp_path, monkeypatch) -> None:
    from klpcore.plugins import get_plugin_manager, list_arch_plugins

    env = _real_env()
    p = run("apply", "--example", "x86_64", "-o", str(tmp_path / "klpdemo.relocated.ko"), env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "" and "warning" not in p.stdout
    assert f"wrote {tmp_path / 'klpdemo.relocated.ko'}" in p.stdout
    archs = [a.name for i in list_arch_plugins(get_plugin_manager()) for a in i.archs]
    for arch in archs:
        p = run("apply", "--example", arch, "-q", "-o", str(tmp_path / f"{arch}.ko"), env=env)
        assert p.returncode == 0 and p.stderr == "", (arch, p.stderr)


def test_readme_embedding_example_runs_as_written(tmp_path) -> None:
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Embedding\s+```python\n(.*?)```", readme, re.S)
    assert code is not None
    (tmp_path / "example.py").write_text(code.group(1))
    p = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, env=_real_env(), timeout=120
    )
    assert p.returncode == 0, p.stderr
    assert "load" in p.stdout and (tmp_path / "klpdemo.relocated.ko").stat().st_size > 0


def test_stub_calls_named_in_disasm() -> None:
    ex = Path(__import__("klpcore_ppc64le").__file__).parent / "examples"
    p = run("disasm", str(ex / "klpdemo.ko"), "-s", str(ex / "System.map"), env=_real_env())
    assert p.returncode == 0
    assert re.search(r"R_PPC64_REL24 \.klp\.sym\.vmlinux\.ext_add,0 -> 0x[0-9a-f]+ \(call through \.stubs", p.stdout)
    addrs = [int(line.split()[1], 16) for line in p.stdout.splitlines() if line.startswith(".text+")]
    assert addrs == sorted(addrs) and addrs


def test_ppc64le_kernel_toc_banana() -> None:
    """The issue's example, through the real plugin's declared options."""
    p = run("apply", "--example", "ppc64le", "-q", "-O", "kernel_toc=banana", env=_real_env())
    assert p.returncode == 2
    assert "-O kernel_toc: 'banana' is not an address; expected 0x-prefixed hex or decimal" in one_line(p.stderr)


@pytest.mark.parametrize(("machine", "arch"), [("s390x", "s390x"), ("aarch64", "arm64"), ("x86_64", "x86_64")])
def test_default_example_is_the_host_architecture(monkeypatch, machine, arch) -> None:
    real = os.uname()
    fake = os.uname_result((real.sysname, real.nodename, real.release, real.version, machine))
    monkeypatch.setattr(os, "uname", lambda: fake)
    code, out, _ = call("apply", "--example")
    assert code == 0 and f"klpcore_{arch}/examples/klpdemo.ko" in out.splitlines()[1]
