"""A data root knows its classes: every run on slides reads them from DATA/dataset.json (preprocess's classes=),
`classes=` on the command line still wins, the synthetic haystack keeps its own list, and a data root written
without dataset.json is one message naming classes=[...]."""

import json

import pytest
from commands import REPO, run_command
from hydra import compose, initialize_config_dir

import attnwsi.training.resolvers  # noqa: F401  (registers ${data_root_classes:...})

BARRETT = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "manifest.csv").write_text("slide_id\n")
    (root / "dataset.json").write_text(json.dumps({"classes": ["normal", "tumor"]}))
    return root


def classes_of(*overrides: str, config: str = "train") -> tuple[list, list]:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config, overrides=list(overrides))
    return list(cfg.classes), list(cfg.data.classes)


@pytest.mark.parametrize("data", ["slides", "crops"])
def test_runs_on_slides_read_the_data_roots_classes(data_root, data):
    assert classes_of(f"data={data}", f"data.root={data_root}") == (["normal", "tumor"], ["normal", "tumor"])
    assert classes_of(f"data={data}", f"data.root={data_root}", config="pretrain")[1] == ["normal", "tumor"]
    # the command line still wins (the data module then checks that it agrees with the data root)
    assert classes_of(f"data={data}", f"data.root={data_root}", "classes=[a,b]")[1] == ["a", "b"]


@pytest.mark.parametrize("experiment", ["be_attention", "be_sliding_window", "slides_cpu", "slides_cpu_sliding_window"])
def test_the_real_slide_experiments_read_them_too(data_root, experiment):
    assert classes_of(f"+experiment={experiment}", f"data.root={data_root}")[1] == ["normal", "tumor"]


@pytest.mark.parametrize("overrides", [[], ["+experiment=haystack_sliding_window"], ["+experiment=haystack_meanpool"]])
def test_the_synthetic_haystack_keeps_its_own_classes(overrides):
    assert classes_of(*overrides) == (BARRETT, BARRETT)


def test_a_data_root_without_dataset_json_is_one_message_naming_classes(data_root, tmp_path):
    (data_root / "dataset.json").unlink()
    proc = run_command("attnwsi.train", "data=slides", f"data.root={data_root}", f"hydra.run.dir={tmp_path / 'run'}",
                       check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "dataset.json: not found" in proc.stderr and "classes=[...]" in proc.stderr
    assert "Traceback" not in proc.stderr
