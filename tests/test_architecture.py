"""The package's layers (read from the source, no imports run): commands on top, nothing imports a command,
no import circle, `models` and `data` independent of each other, top-level helpers import nothing of ours."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attnwsi"
COMMANDS = {"train", "eval", "pretrain", "predict", "preprocess", "synth", "report", "localization"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """Module -> the attnwsi modules it imports (anywhere in the file, lazy imports included)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("attnwsi"):
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.startswith("attnwsi")]
            imported |= {t for t in targets if t in modules and t != "attnwsi"}
        graph[name] = imported - {name}
    return graph


GRAPH = package_imports()


def test_every_command_is_a_top_level_module_with_a_main():
    for command in COMMANDS:
        source = (PACKAGE / f"{command}.py").read_text()
        assert "def main(" in source and 'if __name__ == "__main__":' in source, command


def test_no_module_imports_a_command():
    commands = {f"attnwsi.{c}" for c in COMMANDS}
    offenders = {module: imported & commands for module, imported in GRAPH.items() if imported & commands}
    assert offenders == {}


def test_no_import_circle():
    def visit(module: str, path: list[str]) -> None:
        for imported in GRAPH[module]:
            assert imported not in path, " -> ".join([*path, imported])
            visit(imported, [*path, imported])

    for module in GRAPH:
        visit(module, [module])


@pytest.mark.parametrize("layer, forbidden", [("models", "data"), ("data", "models"), ("data", "training"),
                                              ("data", "inference"), ("models", "training"),
                                              ("models", "inference"), ("inference", "training")])
def test_layers(layer, forbidden):
    offenders = {m: i for m, i in GRAPH.items() if m.startswith(f"attnwsi.{layer}")
                 and any(x.startswith(f"attnwsi.{forbidden}") for x in i)}
    assert offenders == {}


def test_top_level_helpers_import_nothing_from_the_package():
    helpers = [m for m in GRAPH if m.count(".") == 1 and m.split(".")[1] not in COMMANDS
               and (PACKAGE / f"{m.split('.')[1]}.py").exists()]
    assert sorted(helpers) == ["attnwsi.console", "attnwsi.io", "attnwsi.metrics", "attnwsi.viz"]
    assert {m: GRAPH[m] for m in helpers if GRAPH[m]} == {}


def test_every_write_goes_through_the_atomic_helpers():
    """Outside attnwsi/io.py, a writer only ever writes the temporary file (`tmp`) that `write_atomic` renames."""
    direct = (".write_text(", ".write_bytes(", ".to_csv(", ".savefig(", ".save(", "np.savez(", 'open("w', "open('w",
              "TiffWriter(")
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "io.py":
            continue
        hits = [line.strip() for line in path.read_text().splitlines()
                if any(d in line for d in direct) and "(tmp" not in line]
        if hits:
            offenders[path.name] = hits
    assert offenders == {}
