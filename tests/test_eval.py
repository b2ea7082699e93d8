"""`python -m attnwsi.eval` on the checkpoints of both models: the training run's own test results again."""

import json

import pandas as pd
import pytest
from commands import Completed, run_command


def run(args, cache, succeeds: bool = True) -> Completed:
    proc = run_command(*args, cache=cache, check=False)
    assert (proc.returncode == 0) == succeeds, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.parametrize("experiment, overrides", [("haystack_attention", ["model.loss=cross_entropy"]),
                                                  ("haystack_attention", []),  # model.loss=cumulative
                                                  ("haystack_sliding_window", [])],
                         ids=["attention-softmax", "attention-cumulative", "sliding_window"])
def test_eval_of_a_runs_checkpoint_gives_the_runs_test_results(tmp_path, smoke_cache, experiment, overrides):
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    run(["attnwsi.train", f"+experiment={experiment}", "debug=smoke", "ssl=none", *overrides,
         f"hydra.run.dir={train_dir}"], smoke_cache)
    trained = json.loads((train_dir / "results.json").read_text())
    data_root = smoke_cache / "haystack_smoke"
    proc = run(["attnwsi.eval", f"ckpt_path={trained['checkpoint']}", f"data.root={data_root}",
                f"hydra.run.dir={eval_dir}"], smoke_cache)
    evaluated = json.loads((eval_dir / "results.json").read_text())
    assert evaluated["model"] == trained["model"] and evaluated["classes"] == trained["classes"]
    assert evaluated["test"] == trained["test"] and "val" not in evaluated
    assert evaluated["checkpoint"] == trained["checkpoint"]
    predictions = pd.read_csv(eval_dir / "predictions_test.csv")
    assert len(predictions) == trained["test"]["n"]
    assert (predictions.sort_values("sub_image_id").reset_index(drop=True)
            .equals(pd.read_csv(train_dir / "predictions_test.csv").sort_values("sub_image_id").reset_index(drop=True)))
    assert "mean" in proc.stdout  # the printed Table 2
    if experiment == "haystack_attention":  # softmax probabilities, also from a cumulative head's answers
        columns = [f"p_{c}" for c in trained["classes"]]
        probabilities = predictions.sort_values("sub_image_id")[columns].to_numpy()
        assert (probabilities >= 0).all() and abs(probabilities.sum(1) - 1).max() < 1e-5
        # trained with the config's grid shifts; grid_shifts=false answers from each image's own grid alone
        run(["attnwsi.eval", f"ckpt_path={trained['checkpoint']}", f"data.root={data_root}", "grid_shifts=false",
             f"hydra.run.dir={tmp_path / 'one_grid'}"], smoke_cache)
        one_grid = pd.read_csv(tmp_path / "one_grid" / "predictions_test.csv").sort_values("sub_image_id")
        assert len(one_grid) == len(predictions) and abs(one_grid[columns].to_numpy() - probabilities).max() > 1e-4
    else:  # the attention model's settings are an error on a sliding-window checkpoint, not silently ignored
        proc = run(["attnwsi.eval", f"ckpt_path={trained['checkpoint']}", f"data.root={data_root}", "grid_shifts=true",
                    f"hydra.run.dir={tmp_path / 'asked'}"], smoke_cache, succeeds=False)
        text = proc.stdout + proc.stderr
        assert "sliding-window checkpoint" in text and "grid_shifts=True applies to attention checkpoints only" in text
        assert trained["checkpoint"] in text and "Traceback" not in text, text[-3000:]
