"""`train.teacher_cache.cached_teacher`: one image at a time, tokens remembered within a byte budget."""

from __future__ import annotations

import torch

from spatialprobe.encoders.base import EncoderOutput
from spatialprobe.train.teacher_cache import cached_teacher


class Counting(torch.nn.Module):
    """Patch tokens = per-image mean pixel plus a batch-dependent offset (to show batches of one)."""

    name, embed_dim, grid = "counting", 2, (1, 2)

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        self.calls += 1
        m = images.float().mean(dim=(1, 2, 3))[:, None, None] + len(images)  # depends on the batch size
        return EncoderOutput(patch=m.expand(-1, 2, 2).clone(), prefix=m.clone(), grid=(1, 2), layer="final")


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_tokens_match_a_batch_of_one_and_a_second_pass_reads_the_cache():
    enc = Counting()
    t = cached_teacher(enc, "test-hit", budget_mb=1)
    x = _images(3, 0)
    out = t(x)
    assert enc.calls == 3  # one forward per image
    ref = torch.cat([enc(img[None]).patch for img in x])
    assert torch.equal(out.patch, ref) and out.prefix.shape == (3, 1, 1) and out.grid == (1, 2)
    calls = enc.calls
    again = cached_teacher(enc, "test-hit", budget_mb=1)(x)  # another wrapper with the same key shares it
    assert enc.calls == calls and torch.equal(again.patch, out.patch)


class Big(Counting):
    """512 KiB of patch tokens per image (256 tokens x 512 floats), no prefix."""

    embed_dim, grid = 512, (256, 1)

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        self.calls += 1
        m = images.float().mean(dim=(1, 2, 3))[:, None, None]
        return EncoderOutput(patch=m.expand(-1, 256, 512).clone(), prefix=None, grid=(256, 1), layer="final")


def test_budget_zero_turns_the_cache_off():
    enc = Counting()
    off = cached_teacher(enc, "test-off", budget_mb=0)
    x = _images(2, 1)
    off(x), off(x)
    assert enc.calls == 4


def test_a_full_cache_forgets_the_least_recently_used_image():
    enc = Big()
    t = cached_teacher(enc, "test-lru", budget_mb=1)  # room for two images
    x = _images(3, 2)
    out = t(x)
    assert enc.calls == 3 and out.prefix is None and out.patch.shape == (3, 256, 512)
    t(x[1:])  # the two newest are remembered
    assert enc.calls == 3
    again = t(x[:1])  # the oldest was dropped: computed again, with the same tokens
    assert enc.calls == 4 and torch.equal(again.patch, out.patch[:1])


def test_the_batch_is_hashed_from_one_host_copy_in_any_dtype(monkeypatch):
    """One device-to-host copy per batch (not one per image), and a bfloat16 batch (numpy has no bf16)
    is keyed by its bytes too: a changed image misses, the same images hit."""
    copies = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(self.shape) or real_cpu(self, *a, **k))
    enc = Counting()
    t = cached_teacher(enc, "test-bf16", budget_mb=1)
    x = _images(4, 2).to(torch.bfloat16)
    t(x)
    assert copies == [x.shape] and enc.calls == 4
    y = x.clone()
    y[1, 0, 0, 0] += 1
    t(y)
    assert enc.calls == 5  # only the changed image is encoded again
