"""The built wheel carries the twistd plugin, and twistd finds it once installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def source_copy(directory: Path) -> Path:
    """
    The project's files (tracked, or new and not ignored) in ``directory``:
    a build there cannot pick up a stale ``build/`` of the checkout, which
    once made a wheel look whole that was not.
    """
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True, text=True).stdout.splitlines()
    for name in files:
        source = REPO / name
        if source.is_file():
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, directory / name)
    return directory


def test_wheel_holds_the_plugin_and_twistd_lists_it(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    src = source_copy(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = dist.glob("txairflowrpc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "twisted/plugins/airflowrpc.py" in names
    assert "twisted/plugins/__init__.py" not in names  # never shadow Twisted's own
    # Every module of every layer, and nothing else of the package.
    modules = {str(p.relative_to(REPO)) for p in (REPO / "txairflowrpc").rglob("*.py")}
    assert modules == {n for n in names if n.startswith("txairflowrpc/")}

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", str(wheel)], check=True, timeout=600)
    help_text = subprocess.run([str(env_dir / "bin" / "twistd"), "--help"], check=True,
                               capture_output=True, text=True, timeout=120, cwd=tmp_path).stdout
    assert "airflowrpc" in help_text
    # Plugin discovery must not import the gateway itself.
    probe = ("import sys; from twisted.plugin import getPlugins; "
             "from twisted.application.service import IServiceMaker; "
             "names = [p.tapname for p in getPlugins(IServiceMaker)]; "
             "assert 'airflowrpc' in names, names; "
             "assert not any(m.startswith('txairflowrpc') for m in sys.modules), 'imported'")
    subprocess.run([str(env_dir / "bin" / "python"), "-c", probe], check=True, timeout=120,
                   cwd=tmp_path)
