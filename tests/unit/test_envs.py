"""The per-rule conda envs (envs/*.yaml) hold what their rules' scripts import, nothing else, at the versions the suite
runs; the data stage's scripts reach no learning, evaluation or report code; the library's imports only go down.

No conda channel is reachable where the tests run, so the envs are never built here; instead every rule's script is
followed through the library modules it imports (``import`` statements anywhere in a module, and
``importlib.import_module("...")`` strings), and each third-party top-level module must map to a package of the
rule's env, and each package of an env to a module one of its rules needs.
"""

import ast
import importlib.metadata
import platform
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
ENVS = sorted((ROOT / "envs").glob("*.yaml"))

#: package name -> the top-level module it provides, where the two differ
IMPORT_NAME = {
    "scikit-learn": "sklearn",
    "pillow": "PIL",
    "pyyaml": "yaml",
    "pytorch-metric-learning": "pytorch_metric_learning",
    "opentsne": "openTSNE",
}
#: the interpreter and the installer of the pip section: in every env, imported by no script
INSTALLERS = {"python", "pip"}
#: packages no script imports but pandas calls for these methods (its parquet engine, Markdown and LaTeX writers)
ENGINES = {"pyarrow": {"read_parquet", "to_parquet"}, "tabulate": {"to_markdown"}, "jinja2": {"to_latex"}}
#: imported where installed, with a fallback where not: UMAP (t-SNE otherwise, cytodml.report.figures.project_2d)
FALLBACKS = {"umap"}
#: pinned for studies with a timm backbone (the `timm` extra), which the suite does not install: no version to compare
NOT_IN_THE_SUITE = {"timm", "safetensors"}
#: library modules below every stage (config, errors, atomic writers, job logs), then the stages, lowest first
BASE = {"config", "errors", "io", "runlog"}
LAYERS = ("data", "learn", "evaluate", "report", "predict", "cli")


def rule_envs() -> dict[str, str]:
    """script path -> env file, from every rule's ``conda:`` and ``script:`` directives."""
    pairs = {}
    for rule_file in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule \w+:)", rule_file.read_text()):
            env = re.search(r'conda:\s*\n\s*"\.\./(envs/[\w.]+)"', block)
            script = re.search(r'script:\s*\n\s*"\.\./(scripts/[\w.]+)"', block)
            if script:
                assert env, f"{rule_file.name}: a rule running {script.group(1)} has no conda env"
                pairs[script.group(1)] = env.group(1)
    return pairs


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, with ``from package import module`` also as ``package.module``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(node.args[0].value)
    return names


def library_file(name: str) -> Path | None:
    """The source file of library module ``name`` (``cytodml.x.y``), or None where ``name`` is not a module."""
    module = SRC.joinpath(*name.split("."))
    for candidate in (module.with_suffix(".py"), module / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def reached(script: Path) -> tuple[set[str], set[str]]:
    """The library modules ``script`` runs (following its ``cytodml`` imports through the library), and the
    third-party top-level modules they import, and they and the script call for (pandas' engines, see ENGINES)."""
    seen, queue, modules, third_party, attributes = set(), [script], set(), set(), set()
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text())
        attributes.update(node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute))
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top == "cytodml":
                if found := library_file(name):
                    modules.add(name)
                    queue.append(found)
            elif top not in sys.stdlib_module_names:
                third_party.add(top)
    third_party.update(engine for engine, methods in ENGINES.items() if methods & attributes)
    return modules, third_party


def env_spec(env_file: Path) -> tuple[list[str], list[str]]:
    """The conda entries and the pip section's entries of an env file."""
    spec = yaml.safe_load(env_file.read_text())
    conda = [entry for entry in spec["dependencies"] if isinstance(entry, str)]
    pip = [line for entry in spec["dependencies"] if isinstance(entry, dict) for line in entry["pip"]]
    return conda, pip


def env_pins(env_file: Path) -> dict[str, str]:
    """package -> pinned version, of the conda entries (``name =version``) and the pip entries (``name==version``)."""
    conda, pip = env_spec(env_file)
    return dict(entry.split(" =") for entry in conda) | dict(line.split("==") for line in pip)


def module_of(package: str) -> str:
    return IMPORT_NAME.get(package, package.replace("-", "_"))


def layer_of(name: str) -> str:
    """The layer (``data``, ``learn``, ...) or base module of library module ``name``; "" for the package itself."""
    return name.split(".")[1] if "." in name else ""


def scripts_of(env: str) -> list[str]:
    return [script for script, of in rule_envs().items() if of == env]


@pytest.mark.parametrize("env_file", ENVS, ids=lambda path: path.name)
def test_env_pins_python_from_conda_and_every_library_from_pypi(env_file):
    """Conda brings the interpreter and pip; pip brings every library at an exact version (the versions of PyPI that
    the suite runs; conda-forge's builds cannot be resolved where the tests run). The library itself is no entry: it
    comes from the checkout (docs/cluster.md, "Software per rule")."""
    spec = yaml.safe_load(env_file.read_text())
    assert "nodefaults" in spec["channels"] and "conda-forge" in spec["channels"]
    conda, pip = env_spec(env_file)
    assert [entry.split()[0] for entry in conda] == ["python", "pip"], f"{env_file.name}: conda holds {conda}"
    for entry in conda:
        assert re.fullmatch(r"[\w.-]+ =[\w.]+", entry), f"{env_file.name}: '{entry}' is not pinned"
    assert pip, f"{env_file.name}: no pip section"
    for line in pip:
        assert re.fullmatch(r"[a-z0-9-]+==[\w.]+", line), f"{env_file.name}: '{line}' is not a pinned package"
    assert pip == sorted(pip), f"{env_file.name}: pip section not sorted"


@pytest.mark.parametrize("script, env", sorted(rule_envs().items()))
def test_env_holds_every_import_of_its_rules(script, env):
    needed = reached(ROOT / script)[1]
    missing = needed - {module_of(package) for package in env_pins(ROOT / env)} - FALLBACKS
    assert not missing, f"{script} imports {sorted(missing)}, which {env} does not install"


@pytest.mark.parametrize("env_file", ENVS, ids=lambda path: path.name)
def test_env_pins_nothing_its_rules_do_not_import(env_file):
    env = f"envs/{env_file.name}"
    scripts = scripts_of(env)
    assert scripts, f"{env}: no rule uses it"
    needed = set().union(*(reached(ROOT / script)[1] for script in scripts))
    unused = [package for package in env_pins(env_file) if module_of(package) not in needed | INSTALLERS]
    assert not unused, f"{env} pins {unused}, which none of {scripts} imports"


@pytest.mark.parametrize("env_file", ENVS, ids=lambda path: path.name)
def test_env_pins_are_the_versions_the_suite_runs(env_file):
    """Each pin equals the installed version (a local build label such as torch's ``+cpu`` aside: the env takes the
    platform's build of that release); python by its minor version. Not compared: pip (the installer, which CI
    upgrades) and the packages of the timm extra, which the suite does not install."""
    for package, pinned in env_pins(env_file).items():
        if package == "python":
            assert platform.python_version().startswith(f"{pinned}."), f"{env_file.name}: python {pinned}"
        elif package != "pip" and package not in NOT_IN_THE_SUITE:
            installed = importlib.metadata.version(package).split("+")[0]
            assert pinned == installed, f"{env_file.name}: {package} =={pinned}, the suite runs {installed}"


def test_data_scripts_reach_no_learning_evaluation_or_report_code():
    """The data stage's scripts run in an env without the deep-learning and report stack (augment's warps aside,
    which use torch), so they may reach the data layer and the modules below every stage only."""
    blocks = re.split(r"\n(?=rule \w+:)", (ROOT / "rules" / "data.smk").read_text())
    scripts = [match.group(1) for block in blocks if (match := re.search(r'"\.\./(scripts/\w+\.py)"', block))]
    assert sorted(scripts) == [f"scripts/{name}.py" for name in ("augment", "ingest", "patch", "split", "synthesize")]
    for script in scripts:
        above = sorted(name for name in reached(ROOT / script)[0] if layer_of(name) not in BASE | {"", "data"})
        assert not above, f"{script} reaches {above}"


def test_library_imports_only_go_down():
    """data < learn < evaluate < report < predict < cli, each importing only its own layer, those below and the base
    modules; the base modules import only each other."""
    for path in sorted(SRC.joinpath("cytodml").rglob("*.py")):
        layer = path.relative_to(SRC / "cytodml").parts[0].removesuffix(".py")
        if layer == "__init__":
            continue
        allowed = set(BASE) if layer in BASE else BASE | set(LAYERS[: LAYERS.index(layer) + 1])
        upward = sorted(
            name
            for name in imported_modules(path)
            if name.startswith("cytodml.") and library_file(name) and layer_of(name) not in allowed
        )
        assert not upward, f"{path.relative_to(SRC)} imports {upward}, above its layer {layer!r}"


def rule_blocks() -> dict[str, str]:
    """rule name -> the text of its block, from the Snakefile and every rules/*.smk."""
    blocks = {}
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        for block in re.split(r"\n(?=rule \w+:)", path.read_text()):
            if match := re.match(r"rule (\w+):", block):
                blocks[match.group(1)] = block
    return blocks


def test_every_rule_runs_a_script_with_an_env():
    """Every rule that makes files runs one of scripts/ in one of envs/ (a rule without outputs only names targets),
    and every file of scripts/ is a rule's."""
    blocks = rule_blocks()
    makers = {name for name, block in blocks.items() if re.search(r"^    output:", block, flags=re.MULTILINE)}
    assert makers and "all" not in makers
    runs = {name: re.search(r'script:\s*\n\s*"\.\./(scripts/[\w.]+)"', blocks[name]) for name in makers}
    assert [name for name, script in runs.items() if not script] == [], "rules that make files without a script"
    envs = rule_envs()
    assert {script.group(1) for script in runs.values()} == set(envs)
    assert set(envs) == {f"scripts/{path.name}" for path in (ROOT / "scripts").glob("*.py")}
    assert all((ROOT / env).is_file() for env in envs.values()), envs
