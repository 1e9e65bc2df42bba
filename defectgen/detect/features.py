"""Shared tensor helpers for the detectors: batching images, patch features, nearest neighbours, smoothing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# Distance blocks hold at most this many float32 entries (64 MiB); with the matmul's temporaries the peak
# extra memory of a nearest-neighbour search is about three blocks (~192 MiB), whatever the bank size.
NN_BLOCK_ELEMENTS = 1 << 24
# greedy_coreset: up to CORESET_LOOP_ROWS rows one pick per pass, above that picks in sweeps among the
# CORESET_POOL farthest rows; above CORESET_MAX_ROWS rows the picks are made among a random CORESET_MAX_ROWS
CORESET_LOOP_ROWS = 16384
CORESET_POOL = 2048
CORESET_MAX_ROWS = 1_000_000


def to_tensor(images: Sequence[np.ndarray] | np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """H x W x C uint8 (or float in [0, 1]) arrays of one size -> B x C x H x W float32 in [0, 1]."""
    arr = np.stack([np.asarray(i) for i in images]) if not isinstance(images, np.ndarray) else images
    if arr.ndim == 3:
        arr = arr[..., None]
    t = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    t = t.float() / 255.0 if arr.dtype == np.uint8 else t.float()
    return t.permute(0, 3, 1, 2).contiguous()


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def patch_features(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """PatchCore-style local features: each map 3x3 average-pooled (a patch sees its neighbourhood), the
    deeper ones upsampled to the first map's size, concatenated along channels -> B x D x h x w."""
    size = maps[0].shape[-2:]
    out = []
    for m in maps:
        m = F.avg_pool2d(m, 3, stride=1, padding=1)
        if m.shape[-2:] != size:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        out.append(m)
    return torch.cat(out, dim=1)


@torch.no_grad()
def image_features(backbone, images: Sequence[np.ndarray] | np.ndarray, strides: Sequence[int] = (8, 16),
                   batch_size: int = 16, progress: bool = False, desc: str = "features") -> torch.Tensor:
    """N x D x h x w patch features (`patch_features` of the backbone's `strides` maps) of H x W x C images of
    one size (uint8 or float in [0, 1]), computed `batch_size` images at a time on the backbone's device
    (`progress`: a bar, `progress.bar`)."""
    from defectgen.progress import bar

    out = []
    with bar(total=len(images), desc=desc, unit="img", disable=not progress) as shown:
        for sl in batches(len(images), batch_size):
            x = to_tensor(images[sl], backbone.mean.device)
            out.append(patch_features(backbone(x, strides)))
            shown.update(sl.stop - sl.start)
    return torch.cat(out)


def mask_cover(feats: torch.Tensor, masks: Sequence[np.ndarray]) -> torch.Tensor:
    """N x h x w: the share of each patch of N x D x h x w features that the N masks cover."""
    h, w = feats.shape[-2:]
    m = torch.from_numpy(np.stack([np.asarray(x, np.float32) for x in masks]))[:, None].to(feats.device)
    return F.adaptive_avg_pool2d(m, (h, w))[:, 0]


def inside_patches(cover: torch.Tensor) -> torch.Tensor:
    """N x h x w bool: the patches that count as inside a mask (half covered; an image whose mask covers no patch
    that much gives its most-covered patch, so tiny defects are not lost)."""
    inside = cover >= 0.5
    best = cover.flatten(1).argmax(1)
    for i in torch.nonzero(~inside.flatten(1).any(1)).flatten().tolist():
        if cover[i].max() > 0:
            inside[i].view(-1)[best[i]] = True
    return inside


def patches_inside(feats: torch.Tensor, masks: Sequence[np.ndarray]) -> torch.Tensor:
    """P x D: the patches of N x D x h x w features that lie inside the N masks (see `inside_patches`)."""
    return feats.permute(0, 2, 3, 1)[inside_patches(mask_cover(feats, masks))]


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, block: int = NN_BLOCK_ELEMENTS,
                     query_groups: torch.Tensor | None = None, bank_groups: torch.Tensor | None = None) \
        -> torch.Tensor:
    """Euclidean distance from each query row to its nearest bank row, in blocks of at most `block` entries.
    With `query_groups` and `bank_groups` (one integer per row, e.g. the source image), a query ignores the bank
    rows of its own group (leave-one-group-out; inf when no other group is left)."""
    if bank.shape[0] == 0:
        return torch.full((queries.shape[0],), float("inf"), device=queries.device)
    kb = min(bank.shape[0], block)
    mq = max(1, block // kb)
    bank_sq = (bank * bank).sum(1)
    result = torch.empty(queries.shape[0], device=queries.device)
    for qs in range(0, queries.shape[0], mq):
        q = queries[qs: qs + mq]
        q_sq = (q * q).sum(1, keepdim=True)
        best = torch.full((q.shape[0],), float("inf"), device=queries.device)
        for bs in range(0, bank.shape[0], kb):
            d2 = q_sq - 2.0 * (q @ bank[bs: bs + kb].T) + bank_sq[bs: bs + kb]
            if query_groups is not None:
                d2[query_groups[qs: qs + mq, None] == bank_groups[None, bs: bs + kb]] = float("inf")
            best = torch.minimum(best, d2.min(dim=1).values)
        result[qs: qs + mq] = best.clamp_min(0).sqrt()
    return result


@torch.no_grad()
def leave_one_out_quantile(queries: torch.Tensor, query_groups: torch.Tensor, bank: torch.Tensor,
                           bank_groups: torch.Tensor, quantile: float, seed: int = 0, limit: int = 2000) -> float:
    """The `quantile` of (up to `limit` random) normal `queries`' distances to the `bank` rows of *other* groups
    (images): how far from a normal bank a patch may lie and still be normal. An image's own rows would make its
    patches look closer than an unseen normal patch ever is."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(queries.shape[0], generator=g)[:limit].to(queries.device)
    d = nearest_distance(queries[pick], bank, query_groups=query_groups[pick], bank_groups=bank_groups)
    d = d[torch.isfinite(d)]
    return float(torch.quantile(d.float().cpu(), quantile)) if d.numel() else 0.0


@torch.no_grad()
def greedy_coreset(features: torch.Tensor, n: int, seed: int = 0, project_to: int = 128,
                   progress: bool = False, desc: str = "coreset", pool: int = CORESET_POOL,
                   loop_rows: int = CORESET_LOOP_ROWS, max_rows: int = CORESET_MAX_ROWS) -> torch.Tensor:
    """Indices of `n` rows chosen by greedy k-center (each pick is the row farthest from those picked so far),
    on a random projection to `project_to` dimensions as PatchCore does, to keep each step cheap.

    Up to `loop_rows` rows: one pick per pass over all rows. Above, the same picks in sweeps (`_sweep_picks`):
    exactly the greedy picks (up to float rounding where two rows are equally far), a few thousand per pass over
    the rows, made with one matrix product instead of one matrix-vector product per pick. Above `max_rows` rows,
    the picks are made among a seeded random `max_rows` of them (the bank still has `n` rows): the greedy's cost
    grows with rows x picks, i.e. with the square of the number of images. `progress`: a bar (`progress.bar`)."""
    total = features.shape[0]
    if n >= total:
        return torch.arange(total, device=features.device)
    if n < max_rows < total:
        sample = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed) + 1))[:max_rows]
        sample = sample.sort().values.to(features.device)
        return sample[greedy_coreset(features[sample], n, seed, project_to, progress, desc, pool, loop_rows,
                                     max_rows)]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x = features
    if features.shape[1] > project_to:
        proj = torch.randn(features.shape[1], project_to, generator=gen) / project_to ** 0.5
        x = features @ proj.to(features.device)
    x = x.float().contiguous()
    chosen = torch.empty(n, dtype=torch.long, device=features.device)
    chosen[0] = int(torch.randint(total, (1,), generator=gen))
    # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: one mat-vec per pick, no N x D temporary
    x_sq = (x * x).sum(1)
    min_d = x_sq - 2.0 * (x @ x[chosen[0]]) + x_sq[chosen[0]]
    from defectgen.progress import bar

    with bar(total=n, desc=desc, unit="pt", disable=not progress) as shown:
        shown.update(1)
        if total <= loop_rows:
            for i in range(1, n):
                idx = torch.argmax(min_d)
                chosen[i] = idx
                min_d = torch.minimum(min_d, x_sq - 2.0 * (x @ x[idx]) + x_sq[idx])
                if i % 256 == 0 or i == n - 1:
                    shown.update(i + 1 - shown.n)
        else:
            _sweep_picks(x, x_sq, min_d, chosen, pool, shown)
    return chosen


def _sweep_picks(x: torch.Tensor, x_sq: torch.Tensor, min_d: torch.Tensor, chosen: torch.Tensor, pool: int,
                 shown) -> None:
    """Fill `chosen` after its first pick with greedy k-center picks, in sweeps. A sweep takes the `pool` rows
    farthest from the picks so far as candidates and picks among them (each pick updating the candidates'
    distances) while the farthest candidate is farther than every row outside the pool: the row the one-at-a-time
    greedy would pick next, since distances only shrink. Then every row's distance is updated from the sweep's
    picks at once, in blocks of at most `NN_BLOCK_ELEMENTS`. `min_d`: squared distances to the first pick."""
    total, n, done = x.shape[0], chosen.shape[0], 1
    pool = max(1, min(pool, total - 1))
    while done < n:
        values, cand = torch.topk(min_d, pool + 1)
        outside = float(values[pool])  # no row outside the candidates is farther than this
        cand = cand[:pool].sort().values  # by index, so ties go to the lowest index as torch.argmax does
        cand_x, cand_sq, cand_d = x[cand], x_sq[cand], min_d[cand]
        picks: list[int] = []
        while done + len(picks) < n:
            j = int(torch.argmax(cand_d))
            if not float(cand_d[j]) > outside:
                break
            picks.append(j)
            cand_d = torch.minimum(cand_d, cand_sq - 2.0 * (cand_x @ cand_x[j]) + cand_sq[j])
            cand_d[j] = -float("inf")  # picked: never again, even where rounding leaves it a little above 0
        if picks:
            new = cand[torch.tensor(picks, device=cand.device)]
        elif outside > 0:  # a tie with a row outside the pool: one pick the plain way
            new = torch.argmax(min_d).view(1)
        else:  # every row is already at distance 0 (repeated rows): the rest are rows not yet picked
            left = torch.ones(total, dtype=torch.bool, device=x.device)
            left[chosen[:done]] = False
            chosen[done:] = torch.nonzero(left).flatten()[:n - done]
            shown.update(n - done)
            return
        chosen[done: done + len(new)] = new
        done += len(new)
        shown.update(len(new))
        # min over picks p of |x - p|^2 = |x|^2 + min_p (|p|^2 - 2 x.p)
        picked, picked_sq = x[new], x_sq[new]
        rows = max(1, NN_BLOCK_ELEMENTS // len(new))
        for s in range(0, total, rows):
            d = torch.addmm(picked_sq[None], x[s: s + rows], picked.T, alpha=-2.0).min(1).values + x_sq[s: s + rows]
            torch.minimum(min_d[s: s + rows], d, out=min_d[s: s + rows])
        min_d[new] = -float("inf")


def smooth_maps(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each N x H x W map (float32)."""
    if sigma <= 0:
        return maps.astype(np.float32)
    return np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), sigmaX=sigma, sigmaY=sigma,
                                      borderType=cv2.BORDER_REFLECT) for m in maps])


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x h x w (or B x 1 x h x w) -> B x H x W, bilinear."""
    if maps.dim() == 3:
        maps = maps[:, None]
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]




def top_k_mean(maps: np.ndarray | Sequence[np.ndarray], fraction: float) -> np.ndarray:
    """Per map, the mean of its highest `fraction` of pixels (at least one): an image score that one hot pixel
    alone cannot make. Maps may differ in size."""
    out = []
    for m in maps:
        flat = np.asarray(m, np.float32).ravel()
        k = max(1, int(round(fraction * flat.size)))
        out.append(np.partition(flat, -k)[-k:].mean())
    return np.asarray(out, np.float32)
