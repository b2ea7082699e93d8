"""`model.loss=cumulative`: one "risk >= k" answer per class above the first (attnwsi/models/cumulative.py)."""

import pytest
import torch
import torch.nn.functional as F

from attnwsi.models.attention import GridAttention
from attnwsi.models.checkpoints import CheckpointError, load_trained
from attnwsi.models.classifier import AttentionClassifier
from attnwsi.models.cumulative import class_log_probabilities, cumulative_loss
from attnwsi.models.explain import filter_relevance
from attnwsi.training.resume import resume_checkpoint

CLASSES = ["normal", "be_no_dysplasia", "be_with_dysplasia", "adenocarcinoma"]


def test_class_probabilities_are_the_differences_of_the_risk_answers():
    at_least = torch.tensor([[0.9, 0.6, 0.2],    # P(risk >= 1, 2, 3)
                             [0.5, 0.8, 0.1]])   # not non-increasing: P(risk >= 2) is taken as 0.5
    log_probabilities = class_log_probabilities(torch.logit(at_least))
    expected = torch.tensor([[0.1, 0.3, 0.4, 0.2], [0.5, 0.0, 0.4, 0.1]])
    torch.testing.assert_close(log_probabilities.exp(), expected)
    torch.testing.assert_close(log_probabilities.softmax(1), expected)  # they stand in for a softmax's logits


def test_the_loss_answers_yes_up_to_the_label_and_no_above_it():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.2, -2.0]])
    labels = torch.tensor([2, 0])
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    per_image = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
    torch.testing.assert_close(cumulative_loss(logits, labels, torch.ones(4)), per_image.mean())
    weights = torch.tensor([3.0, 1.0, 0.5, 1.0])  # weighted by the label's class, as cross_entropy's weight
    torch.testing.assert_close(cumulative_loss(logits, labels, weights), (0.5 * per_image[0] + 3 * per_image[1]) / 3.5)


def test_the_model_has_one_output_fewer_than_classes_and_predicts_probabilities():
    model = AttentionClassifier(CLASSES, tile_um=64, tile_px=32, num_filters=4, loss="cumulative").eval()
    assert model.head.fc.out_features == 3
    with torch.no_grad():
        logits, maps = model(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8), (2, 3))
    assert logits.shape == (4,) and maps.shape == (4, 2, 3)
    torch.testing.assert_close(logits.exp().sum(), torch.tensor(1.0))


def test_filter_relevance_of_a_cumulative_head_is_each_filters_share_of_yes_to_its_class_and_no_above():
    torch.manual_seed(0)
    head = GridAttention(num_classes=3, in_channels=8, num_filters=5).eval()  # 4 classes: 3 answers
    feature_map = torch.randn(8, 3, 4)
    with torch.no_grad():
        answers, maps = head(feature_map[None])
        # class c: a_{c-1} - a_c, where a_{-1} and a_3 (no such answers) count as 0
        padded_answers, padded_bias = F.pad(answers[0], (1, 1)), F.pad(head.fc.bias, (1, 1))
        for target in range(4):
            relevance = filter_relevance(head, feature_map, maps[0], target, cumulative=True)
            bias = padded_bias[target] - padded_bias[target + 1]
            torch.testing.assert_close(relevance.sum() + bias, padded_answers[target] - padded_answers[target + 1])


def test_a_checkpoint_written_before_the_setting_existed_loads_as_cross_entropy(tmp_path):
    model = AttentionClassifier(CLASSES, tile_um=64, tile_px=32, num_filters=4, loss="cross_entropy")
    hyper_parameters = {k: v for k, v in model.hparams.items() if k != "loss"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hyper_parameters}, tmp_path / "old.ckpt")
    loaded = load_trained(tmp_path / "old.ckpt", {AttentionClassifier: {}}, "cpu")
    assert loaded.hparams.loss == "cross_entropy" and loaded.head.fc.out_features == 4


def test_resuming_a_run_with_another_loss_names_the_setting_not_a_size_mismatch(tmp_path):
    old = AttentionClassifier(CLASSES, tile_um=64, tile_px=32, num_filters=4, loss="cross_entropy")
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": dict(old.hparams), "epoch": 3, "global_step": 9},
               tmp_path / "checkpoints" / "last.ckpt")
    assert resume_checkpoint(tmp_path, old) == tmp_path / "checkpoints" / "last.ckpt"
    new = AttentionClassifier(tuple(CLASSES), tile_um=64, tile_px=32, num_filters=4, loss="cumulative")
    with pytest.raises(CheckpointError, match=r"other settings.*'loss': \('cross_entropy', 'cumulative'\)") as error:
        resume_checkpoint(tmp_path, new)
    assert "classes" not in str(error.value)  # the same classes as a tuple, not a change
