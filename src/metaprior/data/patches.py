"""Random training patches with their own seeded generator."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class PatchSampler:
    """Draws random square crops (with random horizontal/vertical flips) from a list of images.

    The sampler owns a ``torch.Generator``; it never touches the global RNG, and its state can
    be saved and restored for bitwise-reproducible resumption.

    Args:
        images: list of (C, H, W) tensors in [0, 1], each at least ``patch_size`` on both sides.
        patch_size: side of the square crop (default 64; the paper leaves it open).
        seed: seed of the sampler's generator.

    Examples:
        >>> import torch
        >>> s = PatchSampler([torch.rand(1, 80, 90)], patch_size=32, seed=0)
        >>> s.sample(4).shape
        torch.Size([4, 1, 32, 32])
    """

    def __init__(self, images: Sequence[Tensor], patch_size: int = 64, seed: int = 0) -> None:
        if not images:
            raise ValueError("images is empty: give at least one image to sample patches from")
        small = [tuple(im.shape[-2:]) for im in images if min(im.shape[-2:]) < patch_size]
        if small:
            raise ValueError(f"patch_size={patch_size} exceeds image size {small[0]}: lower "
                             f"--patch-size")
        self.images = list(images)
        self.patch_size = patch_size
        self.generator = torch.Generator().manual_seed(seed)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def sample(self, batch_size: int) -> Tensor:
        """(batch_size, C, p, p) patches."""
        p = self.patch_size
        out = []
        for _ in range(batch_size):
            img = self.images[self._randint(len(self.images))]
            h, w = img.shape[-2:]
            i, j = self._randint(h - p + 1), self._randint(w - p + 1)
            patch = img[:, i : i + p, j : j + p]
            if self._randint(2):
                patch = patch.flip(-1)
            if self._randint(2):
                patch = patch.flip(-2)
            out.append(patch)
        return torch.stack(out).float()

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
