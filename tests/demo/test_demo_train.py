"""The training loop: reproducible, and it learns (a few steps on a few images)."""
import os

import torch

from edgekit.host.demo import CATEGORY_IDS, build_demo_model, load_demo_model, preprocess_spec
from edgekit.host.demo.train import LetterboxedSet, save_weights, train_detector


def _tiny_run(train_set, seed=0):
    torch.manual_seed(seed)
    model = build_demo_model()
    model.detect.initialize_biases(320)
    losses = []
    ema = train_detector(model, train_set, epochs=3, batch_size=8, warmup_iters=1, lr=2e-3, seed=seed, log=losses.append)
    return ema, losses


def test_training_is_reproducible_and_saves_loadable_fp16(demo_dataset, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_reproducible(demo_dataset, tmp_path)
    finally:
        torch.set_num_threads(before)


def _check_reproducible(demo_dataset, tmp_path):
    train_set = LetterboxedSet(demo_dataset.val_images_dir, demo_dataset.val_annotations, preprocess_spec(), CATEGORY_IDS, limit=8)
    assert len(train_set) == 8 and sum(t.shape[0] for t in train_set.targets) > 8
    first, _ = _tiny_run(train_set)
    second, _ = _tiny_run(train_set)
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not first.training
    path = str(tmp_path / "w.pt")
    save_weights(first, path)
    assert oct(os.stat(path).st_mode & 0o044) == oct(0o044)  # readable by others once installed
    loaded = load_demo_model(weights=path)
    for key, value in loaded.state_dict().items():
        assert value.dtype == a[key].dtype
        if value.is_floating_point():
            assert torch.allclose(value, a[key], rtol=1e-2, atol=1e-3), key  # fp16 storage


def test_targets_follow_the_letterbox_and_flips(demo_dataset, val_coco):
    train_set = LetterboxedSet(demo_dataset.val_images_dir, demo_dataset.val_annotations, preprocess_spec(), CATEGORY_IDS, limit=2)
    info = val_coco.loadImgs(1)[0]
    anns = val_coco.loadAnns(val_coco.getAnnIds(imgIds=1))
    r = 320.0 / max(info["width"], info["height"])
    t = train_set.targets[0]
    assert t.shape == (len(anns), 5)
    x, y, w, h = anns[0]["bbox"]
    assert abs(float(t[0, 3]) - w * r) < 0.5 and abs(float(t[0, 4]) - h * r) < 0.5
    assert int(t[0, 0]) == CATEGORY_IDS.index(anns[0]["category_id"])
    imgs, rows = train_set.batch([0, 0], [False, True])
    assert torch.equal(imgs[0].flip(-1), imgs[1])
    plain, flipped = rows[rows[:, 0] == 0], rows[rows[:, 0] == 1]
    assert torch.allclose(plain[:, 2] + flipped[:, 2], torch.full_like(plain[:, 2], 320.0))
