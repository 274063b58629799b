"""Running the real workflow in a scratch directory."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def snakemake(workdir, *args, config=None, check=True, timeout=900):
    """Run ``snakemake`` on this repository's Snakefile in ``workdir``; returns the completed process.

    ``config`` (a dict) is written to ``workdir/config.yaml`` and replaces the workflow's default config.
    """
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    if config is not None:
        path = Path(workdir) / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        command += ["--configfile", str(path), "--replace-workflow-config"]
    result = subprocess.run(command + list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture()
def workdir(tmp_path):
    """A scratch working directory beside a link to ``../shared`` so that presets' relative paths resolve."""
    work = tmp_path / "work"
    work.mkdir()
    shared = ROOT.parent / "shared"
    if shared.is_dir():
        (tmp_path / "shared").symlink_to(shared)
    return work


@pytest.fixture(scope="session")
def tiny_config():
    return yaml.safe_load((ROOT / "tests" / "workflow" / "tiny.yaml").read_text())


@pytest.fixture(scope="session")
def default_config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_config):
    """The tiny study run once, end to end (figures included), shared by every test that reads its results."""
    workdir = tmp_path_factory.mktemp("tiny")
    snakemake(workdir, "--cores", "2", config=tiny_config)
    return workdir
