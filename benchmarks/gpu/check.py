"""The GPU check: the CUDA path of cytodml measured in one call on a lent GPU machine (benchmarks/README.md, "GPU
check kit"); with ``--device cpu --quick`` the same steps in a minute on the CPU, so that the kit does not rot.

Steps, each a child process with a time limit inside the whole run's budget, its output appended to the log:

1. environment: ``python -V``, ``pip list``, ``nvidia-smi`` and torch's view of CUDA, first, so that a failed run
   still says why; with ``--device cuda`` and no usable GPU the run stops here;
2. install: the wheel folder (``build_wheels.py``) into a private folder on ``PYTHONPATH`` (``--no-index
   --no-deps``), ``pip check``, and an import of what the image lacks; with ``--device cpu`` this interpreter's
   packages;
3. tests: the suite's CUDA-marked tests (``pytest -m cuda``), a row per test with its outcome, time and the
   differences it recorded;
4. throughput: ``benchmarks/train_throughput.py`` per network (``THROUGHPUT``), ours against the plain loop;
5. slice: the luo2021 preset as one trial of one loss on the default study's synthetic data, end to end through
   Snakemake with the local profile (so train and embed ask for the GPU); ``--quick``: a dry run.

Everything measured goes to ``check.csv`` (rows: step, case, metric, value) and ``check.log`` under ``--out``
(default ``$OUT``), both rewritten as the run goes, so a run cut off keeps what it had. Only the standard library is
imported at the top: the packages this checks may not be installed yet.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu/check.py --device cuda          # on the GPU machine
    python benchmarks/gpu/check.py --device cpu --quick --out /tmp/gpu-check   # here
"""

import argparse
import csv
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / "benchmarks" / "gpu" / "wheels"
DIGEST_NAME = "cytodml-source.sha256"
#: (network, image size) per throughput run on a GPU: the issue's four, at batch 256
THROUGHPUT = [("luo2021", 120), ("small", 48), ("timm:resnet50", 224), ("timm:efficientnet_b3", 224)]
#: the throughput options per mode: a GPU's batch and worker processes, or a CPU run of seconds
THROUGHPUT_OPTIONS = {
    "cuda": ["--batch-size", "256", "--images", "4096", "--steps", "20", "--block", "5", "--warmup", "3",
             "--workers", "8"],
    "quick": ["--batch-size", "32", "--images", "128", "--steps", "4", "--block", "2", "--warmup", "1",
              "--workers", "1", "--threads", "1"],
}  # fmt: skip
#: the slice: the preset's experiment, one loss, one trial; epochs and augmented images capped to fit the budget
SLICE = {"preset": "presets/luo2021-bioparticles.yaml", "loss": "contrastive", "epochs": 10, "augment_count": 4000}
#: seconds per step at most (the run's budget caps them further)
LIMITS = {"environment": 60, "install": 120, "tests": 150, "throughput": 75, "slice": 180}
TORCH_KEYS = ("torch", "cuda_build", "cuda_available", "gpu")
TORCH_PROBE = (
    "import torch; print('torch', torch.__version__); print('cuda_build', torch.version.cuda); "
    "print('cuda_available', torch.cuda.is_available()); "
    "print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else '-')"
)
IMPORT_KEYS = ("cytodml", "pytorch-metric-learning", "snakemake", "cytodml_from")
IMPORT_PROBE = (
    "import importlib.metadata as md, cytodml, pytorch_metric_learning, snakemake; "
    "[print(name, md.version(name)) for name in ('cytodml', 'pytorch-metric-learning', 'snakemake')]; "
    "print('cytodml_from', cytodml.__file__)"
)


def source_digest(root: Path = ROOT) -> str:
    """sha256 over the package sources (``src/cytodml``, paths and contents), so that a run can tell whether the
    project wheel it installs was built from the tree it carries."""
    digest = hashlib.sha256()
    package = root / "src" / "cytodml"
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


class Kit:
    """What the steps of one run share: options, the log, the rows, the clock and the children's environment."""

    def __init__(self, args):
        self.args = args
        self.out = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = (self.out / "check.log").open("a")
        self.rows: list[tuple[str, str, str, object]] = []
        self.failed: list[str] = []
        self.deadline = time.monotonic() + args.budget_s
        self.scratch = Path(tempfile.mkdtemp(prefix="cytodml-gpu-check-"))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
        if args.device == "cpu":
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # so that torch cannot pick a GPU behind the kit's back

    def note(self, text: str) -> None:
        """A line in the log and on the console."""
        print(text, flush=True)
        self.log.write(text + "\n")
        self.log.flush()

    def add(self, step: str, case: str, metric: str, value) -> None:
        self.rows.append((step, case, metric, value))

    def write_csv(self) -> None:
        with (self.out / "check.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "case", "metric", "value"])
            writer.writerows(self.rows)

    def limit(self, step: str) -> float:
        """The step's own limit, cut to what is left of the run's budget."""
        return min(LIMITS[step], self.deadline - time.monotonic())

    def run(self, step: str, case: str, command: list[str], required: bool = True) -> tuple[int | None, str]:
        """Run ``command`` with its output appended to the log; returns its exit status (None: out of time, killed
        with its whole process group) and its output. The status and seconds become rows; a failure of a
        ``required`` command fails the run."""
        limit = self.limit(step)
        if limit <= 1:
            self.note(f"[{step}] {case}: skipped, the run's budget is spent")
            self.add(step, case, "status", "skipped: budget spent")
            self.failed.append(f"{step} {case}")
            return None, ""
        self.note(f"[{step}] {case}: $ {shlex.join(command)}  (limit {limit:.0f} s)")
        start = os.lseek(self.log.fileno(), 0, os.SEEK_END)
        started = time.monotonic()
        child = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # fmt: skip
        try:
            status = child.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # DataLoader workers and Snakemake's jobs go with it
            child.wait()
            status = None
        seconds = time.monotonic() - started
        with (self.out / "check.log").open("rb") as handle:
            handle.seek(start)
            output = handle.read().decode(errors="replace")
        self.add(step, case, "status", "timed out" if status is None else status)
        self.add(step, case, "seconds", round(seconds, 2))
        if status != 0 and required:
            self.failed.append(f"{step} {case}")
            tail = "\n".join(output.splitlines()[-30:])
            self.note(f"[{step}] {case}: {'timed out' if status is None else f'exit status {status}'}\n{tail}")
        self.note(f"[{step}] {case}: {seconds:.1f} s")
        self.write_csv()
        return status, output


def environment(kit: Kit) -> None:
    """What the machine is, before anything can fail: the interpreter, its packages, the GPU and torch's view."""
    python = sys.executable
    _, version = kit.run("environment", "python", [python, "-V"])
    kit.add("environment", "python", "version", version.strip())
    kit.run("environment", "pip list", [python, "-m", "pip", "list"])
    if shutil.which("nvidia-smi"):
        kit.run("environment", "nvidia-smi", ["nvidia-smi"])
    else:
        kit.add("environment", "nvidia-smi", "status", "absent")
    _, probe = kit.run("environment", "torch", [python, "-c", TORCH_PROBE])
    found = dict(line.split(" ", 1) for line in probe.splitlines() if line.split(" ", 1)[0] in TORCH_KEYS)
    for key, value in found.items():
        kit.add("environment", "torch", key, value)
    if kit.args.device == "cuda" and found.get("cuda_available") != "True":
        kit.write_csv()
        raise SystemExit(f"--device cuda, but torch sees no usable GPU ({found}); nothing measured")


def install(kit: Kit) -> None:
    """The wheel folder into a private site folder on the children's ``PYTHONPATH``; the tree's ``src`` goes first
    where the project wheel was built from other sources, since the carried tree is what must be measured."""
    wheels = sorted(kit.args.wheels.glob("*.whl")) if kit.args.wheels.is_dir() else []
    if kit.args.device == "cpu" or not wheels:
        reason = "--device cpu" if kit.args.device == "cpu" else f"no wheels in {kit.args.wheels}"
        kit.note(f"[install] {reason}: this interpreter's packages")
        kit.add("install", "wheels", "status", f"skipped: {reason}")
    else:
        site = kit.scratch / "site"
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--no-cache-dir", "--target", str(site), *map(str, wheels)]  # fmt: skip
        kit.add("install", "wheels", "count", len(wheels))
        if kit.run("install", "wheels", command)[0] == 0:
            paths = [str(site)]
            recorded = kit.args.wheels / DIGEST_NAME
            matches = recorded.exists() and recorded.read_text().strip() == source_digest()
            kit.add("install", "cytodml wheel", "built from this tree", matches)
            if not matches:
                kit.note("[install] the cytodml wheel was built from other sources: src/ goes first on PYTHONPATH")
                paths.insert(0, str(ROOT / "src"))
            kit.env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
            # the image's own packages may conflict among themselves: a finding for the log, not a failed run
            kit.run("install", "pip check", [sys.executable, "-m", "pip", "check"], required=False)
    _, found = kit.run("install", "imports", [sys.executable, "-c", IMPORT_PROBE])
    for line in found.splitlines():
        name, _, value = line.partition(" ")
        if name in IMPORT_KEYS:
            kit.add("install", name, "path" if name == "cytodml_from" else "version", value)


def junit_rows(path: Path) -> list[tuple[str, str, object]]:
    """(test, metric, value) per test of a pytest JUnit file: outcome, seconds, and each ``record_property``."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        rows += [(test, "outcome", outcome), (test, "seconds", case.get("time"))]
        rows += [(test, prop.get("name"), prop.get("value")) for prop in case.iter("property")]
    return rows


def tests(kit: Kit) -> None:
    """The suite's CUDA-marked tests (only ``tests/gpu`` with ``--quick``: collecting the whole suite costs 20 s on
    two cores); without CUDA every one of them reports skipped."""
    junit = kit.scratch / "junit.xml"
    where = "tests/gpu" if kit.args.quick else "tests"
    command = [sys.executable, "-m", "pytest", where, "-m", "cuda", "-q", "-p", "no:cacheprovider", "-rs",
               f"--junitxml={junit}", "-o", "junit_family=xunit1"]  # fmt: skip
    kit.run("tests", "pytest -m cuda", command)
    if junit.exists():
        for test, metric, value in junit_rows(junit):
            kit.add("tests", test, metric, value)


def throughput(kit: Kit) -> None:
    """``train_throughput.py`` once per network, each in its own process (a failing one leaves the others, and the
    GPU's memory starts empty); the profile of the first says where a step's time goes."""
    table = kit.scratch / "throughput.csv"
    cases = THROUGHPUT if not kit.args.quick else [("small", 32)]
    options = THROUGHPUT_OPTIONS["quick" if kit.args.quick else "cuda"]
    for number, (network, size) in enumerate(cases):
        profile = ["--profile"] if number == 0 else []
        command = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--network", network,
                   "--sizes", str(size), *options, *profile, "--csv", str(table)]  # fmt: skip
        kit.run("throughput", f"{network}@{size}px", command)
    if table.exists():
        with table.open() as handle:
            for row in csv.DictReader(handle):
                case = f"{row.pop('network')}@{row.pop('size')}px"
                for metric, value in row.items():
                    kit.add("throughput", case, metric, value)


def slice_config() -> dict:
    """The slice's config: the preset's experiment with one loss and one trial, on the default study's synthetic data
    set at the preset's patch size (the preset's own images are not carried)."""
    import yaml  # not at the top: this runs after the install step, and pyyaml is in the GPU image and the venv

    preset = yaml.safe_load((ROOT / SLICE["preset"]).read_text())
    default = yaml.safe_load((ROOT / "config.yaml").read_text())
    [(name, experiment)] = preset["experiments"].items()
    [(dataset_name, dataset)] = default["datasets"].items()
    dataset = {**dataset, "patch": preset["datasets"][experiment["dataset"]]["patch"]}
    experiment = {
        **experiment, "dataset": dataset_name, "trials": 1, "losses": [SLICE["loss"]],
        "train": {**experiment["train"], "epochs": SLICE["epochs"]},
        "augment": {**experiment["augment"], "count": SLICE["augment_count"]},
    }  # fmt: skip
    return {
        "seed": preset["seed"],
        "datasets": {dataset_name: dataset},
        "losses": {SLICE["loss"]: preset["losses"][SLICE["loss"]]},
        "experiments": {name: experiment},
        "run": [name],
    }


def slice_rows(work: Path, config: dict) -> list[tuple[str, object]]:
    """(metric, value) of a finished slice: the device each train and embed job logged, and training's images/s."""
    [experiment] = config["run"]
    where = f"{experiment}/{SLICE['loss']}/t0"
    rows = []
    for stage in ("train", "embed"):
        log = work / "logs" / experiment / stage / SLICE["loss"] / "t0.log"
        lines = log.read_text().splitlines() if log.exists() else []
        rows.append(
            (f"{stage} device", next((line.split("device: ", 1)[1] for line in lines if "device: " in line), "-"))
        )
    history = work / "results" / experiment / "models" / SLICE["loss"] / "t0.history.csv"
    if history.exists():
        with history.open() as handle:
            rates = sorted(float(row["images_per_s"]) for row in csv.DictReader(handle))
        rows += [(f"{where} epochs", len(rates)), (f"{where} train images/s (median epoch)", rates[len(rates) // 2])]
    return rows


def slice_run(kit: Kit) -> None:
    """The slice through Snakemake with the local profile (train and embed hold the GPU resource, so their
    GPU-request check runs); with ``--quick`` a dry run, which still plans every job of the slice."""
    work = kit.scratch / "slice"
    work.mkdir()
    config = slice_config()
    (work / "slice.json").write_text(json.dumps(config, indent=1))
    dry_run = ["--dry-run"] if kit.args.quick else []
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
               "--configfile", str(work / "slice.json"), "--replace-workflow-config",
               "--workflow-profile", str(ROOT / "profiles" / "local"), *dry_run]  # fmt: skip
    status, output = kit.run("slice", " ".join(["snakemake", *dry_run]), command)
    planned = re.search(r"^total\s+(\d+)", output, re.MULTILINE)
    kit.add("slice", "snakemake", "jobs", int(planned.group(1)) if planned else "-")
    if status == 0 and not kit.args.quick:
        for metric, value in slice_rows(work, config):
            kit.add("slice", "snakemake", metric, value)


def summary(kit: Kit) -> str:
    """The rows a reader wants first, as a short table (the console's tail is what a device call returns): each
    command's status, the tests' outcomes counted and every test that did not pass or skip, the throughput and the
    slice."""
    wanted = {"status", "ours_images_per_s", "plain_images_per_s", "ratio", "ours_share_of_peak", "jobs",
              "train device", "embed device"}  # fmt: skip
    lines = ["| step | case | metric | value |", "|---|---|---|---|"]
    outcomes = [(case, value) for step, case, metric, value in kit.rows if metric == "outcome"]
    for step, case, metric, value in kit.rows:
        if metric in wanted or "images/s" in metric:
            shown = f"{float(value):.3g}" if re.fullmatch(r"-?\d+\.\d+(e-?\d+)?", str(value)) else value
            lines.append(f"| {step} | {case} | {metric} | {shown} |")
    counts = {outcome: sum(1 for _, value in outcomes if value == outcome) for _, outcome in outcomes}
    lines.append(f"| tests | all | outcomes | {', '.join(f'{n} {outcome}' for outcome, n in counts.items()) or '-'} |")
    lines += [
        f"| tests | {case} | outcome | {value} |" for case, value in outcomes if value not in ("passed", "skipped")
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="one small network and a dry run of the slice")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="where check.csv and check.log go")
    parser.add_argument("--wheels", type=Path, default=WHEELS, help="the wheel folder build_wheels.py made")
    parser.add_argument("--budget-s", type=float, default=420, help="the whole run's time, seconds")
    args = parser.parse_args()
    if args.out is None:
        parser.error("--out not given and $OUT unset")
    kit = Kit(args)
    started = time.monotonic()
    kit.note(
        f"cytodml GPU check: --device {args.device}{' --quick' if args.quick else ''}, budget {args.budget_s:.0f} s"
    )
    try:
        for step in (environment, install, tests, throughput, slice_run):
            step(kit)
    finally:
        kit.add("check", "all", "seconds", round(time.monotonic() - started, 1))
        kit.write_csv()
        shutil.rmtree(kit.scratch, ignore_errors=True)
    kit.note(summary(kit))
    kit.note(f"failed: {', '.join(kit.failed)}" if kit.failed else "every step passed")
    raise SystemExit(1 if kit.failed else 0)


if __name__ == "__main__":
    main()
