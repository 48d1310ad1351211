from __future__ import annotations

import numpy as np
import pytest
import torch

from metaprior import data


def test_missing_root_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.delenv("METAPRIOR_DATA", raising=False)
    with pytest.raises(data.DataRootError, match="METAPRIOR_DATA") as e:
        data.resolve_data_root()
    assert "\n" not in str(e.value)
    with pytest.raises(data.DataRootError, match="bsds500/val does not exist"):
        data.bsds500(tmp_path, splits=("val",))
    (tmp_path / "set3c").mkdir()
    with pytest.raises(data.DataRootError, match="holds no image"):
        data.set3c(tmp_path)


def test_reads_temp_data(tmp_path, monkeypatch):
    from PIL import Image

    for split in ("train", "test"):
        (tmp_path / "bsds500" / split).mkdir(parents=True)
        Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(
            tmp_path / "bsds500" / split / "1.png")
    knee = tmp_path / "fastmri" / "knee_mc_val_rss"
    knee.mkdir(parents=True)
    np.save(knee / "a.npy", np.arange(16, dtype=np.float32).reshape(4, 4) * 1e-5)
    (tmp_path / "fastmri" / "splits.json").write_text('{"about": "x", "test": ["a"]}')
    monkeypatch.setenv("METAPRIOR_DATA", str(tmp_path))
    imgs = data.bsds500()
    assert len(imgs) == 2 and imgs[0].shape == (1, 40, 50)
    assert abs(float(imgs[0].mean()) - 128 / 255) < 1e-3
    (s,) = data.fastmri_knee(names="test")
    assert s.shape == (1, 4, 4) and float(s.max()) == 1.0


def test_patch_sampler_seeded():
    imgs = [torch.rand(1, 70, 80), torch.rand(1, 90, 64)]
    state = torch.get_rng_state()
    a = data.PatchSampler(imgs, 32, seed=3).sample(5)
    b = data.PatchSampler(imgs, 32, seed=3).sample(5)
    assert torch.equal(a, b) and a.shape == (5, 1, 32, 32)
    assert torch.equal(torch.get_rng_state(), state)
    s = data.PatchSampler(imgs, 32, seed=3)
    s.sample(2)
    st = s.state_dict()
    nxt = s.sample(3)
    s.load_state_dict(st)
    assert torch.equal(s.sample(3), nxt)
    with pytest.raises(ValueError, match="patch-size"):
        data.PatchSampler(imgs, 100)


def test_demo_images_need_no_data_root():
    train, test = data.demo_images("train", 64), data.demo_images("test", 64)
    assert len(train) == 8 and len(test) == 3
    assert all(im.shape == (1, 64, 64) and 0 <= im.min() and im.max() <= 1 for im in train + test)


@pytest.mark.data
def test_real_datasets(data_root):
    assert len(data.list_images(data_root / "bsds500" / "train")) == 200
    val = data.bsds500(data_root, splits=("val",))
    assert len(val) == 100 and val[0].shape[0] == 1
    s3 = data.set3c(data_root)
    assert len(s3) == 3 and all(im.shape == (3, 256, 256) for im in s3)
    split = data.fastmri_split(data_root)
    assert len(split["finetune"]) == 10 and len(split["test"]) == 10
    assert not set(split["finetune"]) & set(split["test"])
    knees = data.fastmri_knee(data_root, "test")
    assert all(k.shape == (1, 320, 320) and float(k.max()) == 1.0 for k in knees)
