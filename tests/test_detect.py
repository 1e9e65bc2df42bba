"""Backbones, ExDD and AST on toy data: tiny random backbone, 32x32 / 64x64 images, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from defectgen.detect import AST, ExDD, load_backbone, train_ast
from defectgen.detect.features import greedy_coreset, nearest_distance, to_tensor
from defectgen.errors import DefectgenError
from defectgen.metrics import image_auroc

SIZE = 64


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)  # the toy models are too small to gain from threads on a shared 2-core box
    return load_backbone("tiny")


def normals(rng, n, channels=1):
    return (np.clip(rng.normal(0.45, 0.05, (n, SIZE, SIZE, channels)), 0, 1) * 255).astype(np.uint8)


def bright_squares(rng, n, channels=1):
    clean = normals(rng, n, channels)
    images, masks = clean.copy(), np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        y, x = rng.integers(4, SIZE - 20, 2)
        images[i, y:y + 14, x:x + 14] = 255
        masks[i, y:y + 14, x:x + 14] = True
    return images, masks, clean


def test_backbone_maps_strides_and_gray(backbone):
    gray = backbone(torch.rand(2, 1, SIZE, SIZE), (4, 8, 16))
    assert [tuple(m.shape[-2:]) for m in gray] == [(16, 16), (8, 8), (4, 4)]
    x = torch.rand(2, 1, SIZE, SIZE)
    same = backbone(x.expand(-1, 3, -1, -1), (8,))[0]
    assert torch.allclose(backbone(x, (8,))[0], same)  # gray is fed as three equal channels
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training  # frozen whatever the caller asks
    assert all(m.abs().mean() > 1e-3 for m in gray)  # random weights must not collapse to zero


def test_backbone_bad_folder(tmp_path):
    with pytest.raises(DefectgenError) as e:
        load_backbone(str(tmp_path / "missing"))
    assert "missing" in str(e.value) and "\n" not in str(e.value)


def test_backbone_from_saved_folder(tmp_path):
    from transformers import MobileNetV2ImageProcessor

    from defectgen.detect.backbone import tiny_model

    tiny_model().save_pretrained(tmp_path / "bb")
    MobileNetV2ImageProcessor(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(tmp_path / "bb")
    loaded = load_backbone(str(tmp_path / "bb"))
    assert not loaded.use_backbone_api
    assert torch.allclose(loaded.mean.flatten(), torch.tensor([0.5] * 3))  # read from the preprocessor config
    x = torch.rand(1, 3, SIZE, SIZE)
    assert torch.allclose(loaded(x, (8,))[0], load_backbone("tiny")(x, (8,))[0], atol=1e-5)


def test_nearest_distance_in_blocks_matches_cdist():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(37, 5, generator=g), torch.randn(53, 5, generator=g)
    ref = torch.cdist(q, bank).min(1).values
    assert torch.allclose(nearest_distance(q, bank, block=64), ref, atol=1e-4)  # many small blocks
    assert torch.allclose(nearest_distance(q, bank), ref, atol=1e-4)


def test_nearest_distance_can_leave_each_querys_own_group_out():
    g = torch.Generator().manual_seed(1)
    q, bank = torch.randn(30, 4, generator=g), torch.randn(40, 4, generator=g)
    qg, bg = torch.arange(30) % 3, torch.arange(40) % 4  # bank group 3 is never a query's own
    d = torch.cdist(q, bank)
    d[qg[:, None] == bg[None, :]] = float("inf")
    ref = d.min(1).values
    assert torch.allclose(nearest_distance(q, bank, block=16, query_groups=qg, bank_groups=bg), ref, atol=1e-4)
    assert bool((ref > torch.cdist(q, bank).min(1).values - 1e-6).all())


def test_coreset_covers_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10]])
    pts = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    chosen = greedy_coreset(pts, 4)
    assert len({int(i) // 50 for i in chosen}) == 4  # k-center picks one point from each cluster


def test_exdd_scores_bright_squares_above_normals(backbone, tmp_path):
    rng = np.random.default_rng(0)
    train = normals(rng, 16)
    syn, syn_masks, _ = bright_squares(rng, 8)
    test_def, test_masks, _ = bright_squares(rng, 8)
    test_norm = normals(rng, 8)
    # strides 4 and 8: at 64x64 the deeper maps of a random network are too coarse to separate anything
    det = ExDD(backbone, strides=(4, 8), coreset_ratio=0.25, sigma=2).fit(train, syn, syn_masks)
    assert det.negative.shape[0] == round(0.25 * 16 * 16 * 16) and det.positive.shape[0] > 0
    maps, scores = det.predict(np.concatenate([test_norm, test_def]))
    assert maps.shape == (16, SIZE, SIZE)
    assert image_auroc([0] * 8 + [1] * 8, scores) == 1.0
    # the defect pixels score above the rest of their own images
    inside = maps[8:][test_masks].mean()
    assert inside > maps[8:][~test_masks].mean()
    det.save(tmp_path / "exdd.safetensors")
    again = ExDD.load(tmp_path / "exdd.safetensors", backbone)
    assert np.allclose(again.predict(test_def)[1], scores[8:], rtol=1e-5)


def test_positive_bank_moves_scores_as_the_ratio_says(backbone):
    rng = np.random.default_rng(1)
    train = normals(rng, 12)
    syn, syn_masks, _ = bright_squares(rng, 6)
    query, _, _ = bright_squares(rng, 4)
    plain = ExDD(backbone, strides=(4, 8), coreset_ratio=0.5).fit(train)
    with_pos = ExDD(backbone, strides=(4, 8), coreset_ratio=0.5).fit(train, syn, syn_masks)
    feats = plain.features(query)
    d_neg = plain.patch_scores(feats)
    ratio = with_pos.patch_scores(feats)
    q = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    d_pos = nearest_distance(q, with_pos.positive).view_as(ratio)
    assert torch.allclose(ratio, d_neg / (d_pos + with_pos.eps), rtol=1e-4)
    # patches nearer the positive bank gain more: the ratio to plain PatchCore falls as d_pos grows
    gain = (ratio / d_neg).flatten()
    order = torch.argsort(d_pos.flatten())
    assert gain[order[: len(order) // 4]].mean() > gain[order[-len(order) // 4:]].mean()
    # a positive bank made of the query's own patches raises every query patch's score
    own = ExDD(backbone, coreset_ratio=0.5)
    own.negative, own.positive = with_pos.negative, q.clone()
    far = ExDD(backbone, coreset_ratio=0.5)
    far.negative, far.positive = with_pos.negative, q.clone() + 100.0
    assert bool((own.patch_scores(feats) > far.patch_scores(feats)).all())


def test_ast_loss_falls_and_round_trips(backbone, tmp_path):
    rng = np.random.default_rng(2)
    train = normals(rng, 12)
    syn, masks, clean = bright_squares(rng, 8)
    torch.manual_seed(0)
    model = AST(backbone, width=8, head_width=16)
    history, report = train_ast(model, train, syn, masks, clean, steps=40, batch_size=8, lr=3e-3,
                                progress=False)
    assert report["validation_images"] == 0  # 8 defects: too few to carve a split, every pass runs
    assert np.mean(history[-5:]) < 0.8 * np.mean(history[:5])
    assert model.use_head
    test_def, _, _ = bright_squares(rng, 4)
    maps, scores = model.predict(np.concatenate([normals(rng, 4), test_def]))
    assert maps.shape == (8, SIZE, SIZE) and np.isfinite(scores).all()
    assert 0 <= maps.min() and maps.max() <= 1  # the head's sigmoid
    model.save(tmp_path / "ast.safetensors")
    again = AST.load(tmp_path / "ast.safetensors", backbone)
    assert np.allclose(again.predict(test_def)[1], scores[4:], atol=1e-5)


def test_ast_without_defects_uses_student_teacher_distance(backbone):
    rng = np.random.default_rng(3)
    model = AST(backbone, width=8, head_width=16)
    history, report = train_ast(model, normals(rng, 8, channels=3), steps=15, batch_size=4, progress=False)
    assert len(history) == 15 and "no defects" in report["stopped"]
    assert not model.use_head and np.mean(history[-3:]) < np.mean(history[:3])
    maps, scores = model.predict(normals(rng, 2, channels=3))
    assert maps.shape == (2, SIZE, SIZE) and (scores >= 0).all()


def test_ast_head_stops_early_on_its_validation_split_and_keeps_the_best_pass(backbone):
    rng = np.random.default_rng(4)
    syn, masks, clean = bright_squares(rng, 24)
    model = AST(backbone, width=8, head_width=16)
    # lr 0: nothing learns, so the first pass's validation AP is never beaten and three passes later it stops
    history, report = train_ast(model, normals(rng, 6), syn, masks, clean, steps=500, batch_size=8, lr=0.0,
                                patience=3, progress=False)
    assert report["validation_images"] == 4 and report["train_images"] == 20
    assert report["epochs"] == 4 and "no validation gain" in report["stopped"] and report["best_epoch"] == 1
    assert len(history) == 4 * 50  # four passes: 20 training defects, 4 per batch, at least 50 steps a pass


def test_ast_losses_from_cached_teacher_maps_equal_the_live_ones(backbone):
    from defectgen.detect.convergence import MapCache

    rng = np.random.default_rng(5)
    syn, masks, clean = bright_squares(rng, 3)
    model = AST(backbone, width=8, head_width=16).eval()
    x, c = to_tensor(syn, model.device), to_tensor(clean, model.device)
    m = torch.from_numpy(masks.astype(np.float32))
    cache = MapCache(lambda t: model.teacher(t, model.strides), list(syn) + list(clean), model.device)
    with torch.no_grad():
        live = model.losses(x, c, m, with_head=True)
        cached = model.losses_of(x, cache.maps([(3, 0), (4, 0), (5, 0)]), cache.maps([(0, 0), (1, 0), (2, 0)]), m,
                                 with_head=True)
    for k in live:  # half-precision cache: equal up to float16 rounding
        torch.testing.assert_close(cached[k], live[k], rtol=1e-2, atol=1e-3)


def test_load_rejects_other_files(tmp_path, backbone):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not safetensors")
    with pytest.raises(DefectgenError):
        ExDD.load(bad, backbone)
    with pytest.raises(DefectgenError):
        AST.load(bad, backbone)


def test_positive_quantile_drops_defect_patches_that_look_normal(backbone):
    rng = np.random.default_rng(2)
    train = normals(rng, 12)
    bright, masks, _ = bright_squares(rng, 4)
    noop = normals(rng, 4)  # 'defects' whose masked region did not change: normal texture in the positive bank
    kw = dict(strides=(4, 8), coreset_ratio=0.25, positive_quantile=0.99)
    from_noop = ExDD(backbone, **kw).fit(train, noop, masks)
    from_bright = ExDD(backbone, **kw).fit(train, bright, masks)
    unfiltered = ExDD(backbone, strides=(4, 8), coreset_ratio=0.25).fit(train, bright, masks)
    kept_noop = 0 if from_noop.positive is None else from_noop.positive.shape[0]
    assert from_noop.positive_dropped > 0 and kept_noop <= 0.2 * (kept_noop + from_noop.positive_dropped)
    assert from_bright.positive.shape[0] >= 0.8 * unfiltered.positive.shape[0]
    assert from_bright.positive.shape[0] + from_bright.positive_dropped == unfiltered.positive.shape[0]
    with pytest.raises(ValueError, match="positive_quantile"):
        ExDD(backbone, positive_quantile=1.5)


def _greedy_one_at_a_time(x: torch.Tensor, n: int, first: int) -> list[int]:
    """The plain greedy k-center, one pick per pass over the rows, in float64: the reference."""
    x = x.double()
    chosen = [first]
    min_d = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, n):
        idx = int(torch.argmax(min_d))
        chosen.append(idx)
        min_d = torch.minimum(min_d, ((x - x[idx]) ** 2).sum(1))
    return chosen


def _coverage(x: torch.Tensor, chosen) -> float:
    """The coverage radius: how far the row farthest from every chosen row lies from its nearest one."""
    return float(torch.cdist(x, x[torch.as_tensor(chosen)]).min(1).values.max())


def test_coreset_in_sweeps_picks_what_the_one_at_a_time_greedy_picks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 6, generator=g) * torch.rand(3000, 1, generator=g) * 4  # spread: no near-ties
    first = int(torch.randint(3000, (1,), generator=torch.Generator().manual_seed(0)))
    reference = _greedy_one_at_a_time(x, 200, first)
    swept = greedy_coreset(x, 200, loop_rows=0, pool=64)  # many sweeps of a small pool
    assert swept.tolist() == reference
    assert greedy_coreset(x, 200).tolist() == reference  # small inputs: the loop, as before


def test_coreset_of_many_rows_covers_as_well_as_the_exact_greedy():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(40, 8, generator=g) * 10
    x = centres[torch.randint(40, (20000,), generator=g)] + torch.randn(20000, 8, generator=g)
    first = int(torch.randint(20000, (1,), generator=torch.Generator().manual_seed(0)))
    exact = _coverage(x, _greedy_one_at_a_time(x, 400, first))
    swept = greedy_coreset(x, 400)  # 20,000 rows: the sweeps
    assert len(set(swept.tolist())) == 400
    assert _coverage(x, swept) <= exact * 1.001  # the same greedy, up to float rounding in near-ties
    # above max_rows the picks come from a random share of the rows: within 1.5x of the exact radius here
    sampled = greedy_coreset(x, 400, max_rows=5000)
    assert len(set(sampled.tolist())) == 400 and _coverage(x, sampled) <= exact * 1.5


def test_coreset_of_repeated_rows_picks_distinct_rows():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)).repeat(400, 1)  # 20,000 rows, 50 distinct
    chosen = greedy_coreset(x, 300, pool=64)
    assert len(set(chosen.tolist())) == 300 and len(set((chosen % 50).tolist())) == 50
