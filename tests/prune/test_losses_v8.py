"""The yolov8-layout distillation loss (host/prune/losses.py): weighted as designed, zero at a match, differentiable."""
import torch

from edgekit.host.prune.losses import distillation_loss, yolov8_loss

NC = 4


def _outputs(n_anchors: int, objects: int = 3) -> torch.Tensor:
    """(1, 4 + NC, N) like a YOLOv8 head in export mode: boxes in pixels, sigmoid class scores.

    The first ``objects`` anchors see an object (one class at 0.9), the rest background (every class 0.001)."""
    gen = torch.Generator().manual_seed(0)
    boxes = torch.cat((torch.rand(2, n_anchors, generator=gen) * 300, 20 + torch.rand(2, n_anchors, generator=gen) * 40), 0)
    scores = torch.full((NC, n_anchors), 0.001)
    scores[0, :objects] = 0.9
    return torch.cat((boxes, scores), 0)[None]


def _with_score(out: torch.Tensor, anchor: int, cls: int, value: float) -> torch.Tensor:
    out = out.clone()
    out[0, 4 + cls, anchor] = value
    return out


def test_zero_when_the_student_matches_the_teacher():
    teacher = _outputs(500)
    assert abs(float(yolov8_loss(teacher.clone(), teacher))) < 1e-5
    assert float(yolov8_loss(_with_score(teacher, 0, 1, 0.3), teacher)) > 1e-3


def test_a_false_positive_is_not_drowned_by_the_box_term():
    # Without objectness a background anchor's class score is a detection's confidence:
    # one false score of 0.5 must cost about as much as a 10 % shift of one object's box
    # (the plain mean over anchors x classes it replaces made it ~1/500 of that).
    teacher = _outputs(2100)
    false_positive = float(yolov8_loss(_with_score(teacher, 1000, 2, 0.5), teacher))
    shifted = teacher.clone()
    shifted[0, 0, 0] += 0.1 * float(teacher[0, 2, 0])
    box_error = float(yolov8_loss(shifted, teacher))
    assert false_positive > 0.2 * box_error > 0


def test_a_class_error_is_not_drowned_by_more_background_anchors():
    # A plain mean over anchors x classes shrank an object's class error with every
    # background anchor added (2100 anchors at 320x320, 8400 at 640x640).
    small, large = _outputs(100), _outputs(8400)
    # Measured above the loss at a match (a soft cross-entropy's floor is the teacher's entropy).
    err_small = float(yolov8_loss(_with_score(small, 0, 0, 0.5), small) - yolov8_loss(small, small))
    err_large = float(yolov8_loss(_with_score(large, 0, 0, 0.5), large) - yolov8_loss(large, large))
    assert err_large > 0.2 * err_small > 0


def test_gradients_reach_the_student_boxes_and_scores_not_the_teacher():
    teacher = _outputs(300).requires_grad_(True)
    student = teacher.detach().clone()
    student[0, 0:2, :3] += 5.0  # object boxes shifted
    student[0, 4 + 1, :] = 0.2  # a wrong class everywhere
    student.requires_grad_(True)
    loss = yolov8_loss(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    assert float(student.grad[0, 0:2, :3].abs().sum()) > 0  # box term
    assert float(student.grad[0, 4 + 1, 3:].abs().sum()) > 0  # background class scores
    assert teacher.grad is None


def test_the_layout_picks_it_and_a_batch_is_differentiable_end_to_end():
    torch.manual_seed(0)
    head = torch.nn.Conv2d(3, 4 + NC, 1)
    x = torch.rand(2, 3, 8, 8)
    raw = head(x).flatten(2)
    student = torch.cat((raw[:, :2].sigmoid() * 64, 4 + raw[:, 2:4].exp() * 8, raw[:, 4:].sigmoid()), 1)
    with torch.no_grad():
        teacher = student.detach() * torch.tensor([1.0, 1.0, 1.1, 0.9, 1.0, 1.0, 1.0, 1.0]).view(1, -1, 1)
        teacher[:, 4:] = torch.rand(2, NC, 64)
    loss = distillation_loss("yolov8")(student, teacher)
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in head.parameters())
