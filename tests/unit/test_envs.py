"""The per-rule conda envs (envs/*.yaml) parse, are pinned, and hold every third-party package their rules import.

No conda channel is reachable where the tests run, so the envs are never built here; instead every rule's script is
followed through the library modules it imports (``import`` statements anywhere in a module, and
``importlib.import_module("...")`` strings), and each third-party top-level module must map to a package of the
rule's env.
"""

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"

#: conda package name -> the top-level module it provides
IMPORT_NAME = {
    "pytorch": "torch",
    "scikit-learn": "sklearn",
    "pillow": "PIL",
    "pyyaml": "yaml",
    "matplotlib-base": "matplotlib",
    "pytorch-metric-learning": "pytorch_metric_learning",
}
#: imported only where installed: the timm extra (with local .safetensors weights) and UMAP (t-SNE otherwise)
OPTIONAL = {"timm", "torchvision", "umap", "safetensors"}


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
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(node.args[0].value)
    return names


def third_party_imports(script: Path) -> set[str]:
    """Top-level third-party modules a script needs, following ``cytodml`` imports through the library."""
    seen, queue, found = set(), [script], set()
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top == "cytodml":
                parts = name.split(".")
                module = SRC.joinpath(*parts)
                for candidate in (module.with_suffix(".py"), module / "__init__.py"):
                    if candidate.exists():
                        queue.append(candidate)
                        break
            elif top not in sys.stdlib_module_names:
                found.add(top)
    return found


def env_packages(env_file: Path) -> set[str]:
    spec = yaml.safe_load(env_file.read_text())
    names = set()
    for dependency in spec["dependencies"]:
        if isinstance(dependency, str):
            names.add(IMPORT_NAME.get(dependency.split()[0], dependency.split()[0]).replace("-", "_"))
    return names


@pytest.mark.parametrize("env_file", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda path: path.name)
def test_env_parses_and_pins_every_package(env_file):
    spec = yaml.safe_load(env_file.read_text())
    assert "nodefaults" in spec["channels"] and "conda-forge" in spec["channels"]
    for dependency in spec["dependencies"]:
        if isinstance(dependency, str):
            assert re.fullmatch(r"[\w.-]+ =[\w.]+", dependency), f"{env_file.name}: '{dependency}' is not pinned"
        else:
            assert dependency["pip"] == ["--no-deps -e ../"], "the library itself, from the checkout"


@pytest.mark.parametrize("script, env", sorted(rule_envs().items()))
def test_env_covers_every_import_of_its_rules(script, env):
    missing = third_party_imports(ROOT / script) - env_packages(ROOT / env) - OPTIONAL
    assert not missing, f"{script} imports {sorted(missing)}, which {env} does not install"


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
