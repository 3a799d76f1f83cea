"""The YOLOv5-style loss: CIoU values and target assignment, checked by hand."""
import torch

from edgekit.host.demo import build_demo_model
from edgekit.host.demo.loss import YoloLoss, bbox_ciou


def test_ciou_is_one_for_identical_boxes_and_negative_when_far_apart():
    a = torch.tensor([[10.0, 10.0, 4.0, 6.0]])
    assert abs(float(bbox_ciou(a, a)) - 1.0) < 1e-5
    far = torch.tensor([[30.0, 30.0, 4.0, 6.0]])
    assert float(bbox_ciou(a, far)) < 0
    # Same IoU, but a different aspect ratio costs more.
    wide = torch.tensor([[10.0, 10.0, 6.0, 4.0]])
    assert float(bbox_ciou(a, wide)) < float(bbox_ciou(a, torch.tensor([[10.0, 10.0, 4.0, 4.0]]))) + 1.0


def test_a_target_is_assigned_to_its_cell_and_two_neighbours():
    detect = build_demo_model().detect
    loss = YoloLoss(detect, image_size=320)
    # One 12x13 px object centred at (99, 43): at stride 8 that is (12.4, 5.4), cell (12, 5), upper-left quarter.
    targets = torch.tensor([[0.0, 2.0, 99.0, 43.0, 12.0, 13.0]])
    b, a, gj, gi, tbox, tcls = loss._assign(0, torch.Size((1, 3, 40, 40, 13)), targets)
    cells = {(int(j), int(i)) for j, i in zip(gj, gi)}
    assert cells == {(5, 12), (5, 11), (4, 12)}  # own cell, left and upper neighbours
    assert set(tcls.tolist()) == {2} and set(b.tolist()) == {0}
    assert len(set(a.tolist())) == 3  # all three P3 anchors fit a 12x13 box
    # Box targets are offsets from each assigned cell, within the head's reach.
    assert float(tbox[:, :2].min()) >= -0.5 and float(tbox[:, :2].max()) <= 1.5
    # Far too big for P3's anchors (more than 4x): not assigned there.
    big = torch.tensor([[0.0, 1.0, 160.0, 160.0, 150.0, 150.0]])
    assert loss._assign(0, torch.Size((1, 3, 40, 40, 13)), big)[0].numel() == 0


def test_loss_prefers_the_right_answer():
    torch.manual_seed(0)
    model = build_demo_model().train()
    loss = YoloLoss(model.detect, image_size=64)
    targets = torch.tensor([[0.0, 3.0, 20.0, 28.0, 14.0, 14.0]])
    raw = [r.detach() for r in model(torch.rand(1, 3, 64, 64))]
    base, _ = loss(raw, targets)
    # Make every assigned cell, at every scale, say "object of class 3" confidently: the loss must drop.
    better = [r.clone() for r in raw]
    for i, r in enumerate(better):
        b, a, gj, gi, _, _ = loss._assign(i, r.shape, targets)
        r[..., 4] = -8.0
        r[b, a, gj, gi, 4] = 4.0
        r[b, a, gj, gi, 5:] = -8.0
        r[b, a, gj, gi, 5 + 3] = 8.0
    improved, parts = loss(better, targets)
    assert float(improved) < float(base)
    assert parts["cls"] < 0.01
