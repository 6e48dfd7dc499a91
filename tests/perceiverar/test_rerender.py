"""Re-rendered images (perceiverar/data/rerender.py): variants are the source picture moved and scaled before the
resize, cached once, and swapped into captioned training rows only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from perceiverar import data as D
from perceiverar.data.rerender import rerender, variant_params
from tokenizers_mm.image import ImageTokenizer
from tokenizers_mm.vocab import IMAGE_BEGIN, PAD, TEXT_END

from test_data import _assert_row_layout, make_image_folder


def square(size: int = 64, lo: int = 16, hi: int = 48) -> Image.Image:
    """A black square on white: its edges show where a re-render moved it."""
    a = np.full((size, size, 3), 255, np.uint8)
    a[lo:hi, lo:hi] = 0
    return Image.fromarray(a)


def test_rerender_moves_and_scales_the_source_picture():
    tok = ImageTokenizer(16, 16)  # 4 source pixels per target pixel
    img = square()
    assert np.array_equal(np.asarray(rerender(img, tok, 0.0, 0.0, 1.0)), np.asarray(img))  # identity
    # one target pixel right and down = 4 source pixels: the square's edges move by 4
    moved = np.asarray(rerender(img, tok, 1.0, 1.0, 1.0))
    dark = np.argwhere(moved[..., 0] < 128)
    assert dark.min(0).tolist() == [20, 20] and dark.max(0).tolist() == [51, 51]
    # scaled by 0.5 about the centre (32, 32): 32 px wide -> 16, the rest white
    small = np.asarray(rerender(img, tok, 0.0, 0.0, 0.5))
    dark = np.argwhere(small[..., 0] < 128)
    assert dark.min(0).tolist() == [24, 24] and dark.max(0).tolist() == [39, 39]
    assert (small[:20] == 255).all()
    # variants: fixed per (file, k), within the bounds, different across k
    spec = D.RerenderSpec(variants=8, max_shift=0.5, min_scale=0.9)
    ps = [variant_params("google/1f600.png", k, spec) for k in range(8)]
    assert ps == [variant_params("google/1f600.png", k, spec) for k in range(8)] and len(set(ps)) == 8
    assert all(abs(dx) <= 0.5 and abs(dy) <= 0.5 and 0.9 <= s <= 1.0 and deg == 0 for dx, dy, s, deg in ps)
    with pytest.raises(D.DatasetError, match="variants"):
        D.RerenderSpec(variants=0)


def test_rerender_turns_the_source_picture_about_its_centre():
    tok = ImageTokenizer(16, 16)
    a = np.full((64, 64, 3), 255, np.uint8)
    a[30:34, 50:54] = 0  # a dot right of the centre (32, 32)
    img = Image.fromarray(a)

    def dot(*params) -> list[float]:
        """(row, column) of the dark pixels' centre after ``rerender(img, tok, *params)``."""
        return np.argwhere(np.asarray(rerender(img, tok, *params))[..., 0] < 128).mean(0).round(1).tolist()

    assert dot(0.0, 0.0, 1.0, 0.0) == [31.5, 51.5]
    assert dot(0.0, 0.0, 1.0, 90.0) == [11.5, 31.5]  # counter-clockwise as seen: right of centre -> above it
    assert dot(0.0, 0.0, 1.0, -90.0) == [51.5, 31.5]
    assert dot(1.0, 0.0, 1.0, 90.0) == [11.5, 35.5]  # then moved one target pixel (4 source pixels) right
    # a spec with turns: within bounds, the first three parameters the same as without (old caches stay valid)
    turned, plain = D.RerenderSpec(variants=8, max_rotate=10.0), D.RerenderSpec(variants=8)
    for k in range(8):
        *moved, deg = variant_params("google/1f600.png", k, turned)
        assert moved == list(variant_params("google/1f600.png", k, plain)[:3]) and abs(deg) <= 10.0
    assert len({variant_params("google/1f600.png", k, turned)[3] for k in range(8)}) == 8
    assert plain.key() == [8, 0.5, 0.9] and turned.key() == [8, 0.5, 0.9, 10.0]
    with pytest.raises(D.DatasetError, match="rotation"):
        D.RerenderSpec(max_rotate=60.0)


@pytest.mark.parametrize("mode", ["subpixel", "sketch"])
def test_rerenders_are_cached_tokenizations_of_the_moved_pictures(shared_data, tmp_path, mode):
    img = make_image_folder(shared_data, tmp_path / "emoji", n=6, corrupt=False)
    palette = None if mode == "subpixel" else tuple(map(tuple, D.fit_source_palette(
        [D.SourceSpec(img, 1.0, "image")], D.TokenizerSettings(image_height=8, image_width=8), tmp_path / "c",
        colours=16, log=lambda m: None)))  # fmt: skip
    settings = D.TokenizerSettings(image_height=8, image_width=8, image_mode=mode, image_palette=palette)
    (src,), _ = D.prepare_sources([D.SourceSpec(img, 1.0, "image")], settings, tmp_path / "c", progress=False)
    spec = D.RerenderSpec(variants=3)
    rr = D.prepare_rerenders(src, spec, tmp_path / "c", progress=False)
    assert rr.ids.shape == (len(src), 3, src.target_range(0)[1] - src.target_range(0)[0])
    tok = ImageTokenizer.from_dict(src.manifest["tokenizer"])
    for i in range(len(src)):
        source = Image.open(img / src.file(i))
        for k in range(3):
            want = tok.encode(rerender(source, tok, *variant_params(src.file(i), k, spec)))
            assert rr.content(i, k).tolist() == want
    a, b = src.target_range(0)
    assert any(not np.array_equal(rr.content(i, k), src.item(i)[a:b]) for i in range(len(src)) for k in range(3))
    # a second call reads the cache; other settings make another one
    assert D.prepare_rerenders(src, spec, tmp_path / "c", progress=False).dir == rr.dir
    assert D.prepare_rerenders(src, D.RerenderSpec(variants=2), tmp_path / "c", progress=False).dir != rr.dir
    turned = D.RerenderSpec(variants=3, max_shift=1.0, max_rotate=15.0)
    rt = D.prepare_rerenders(src, turned, tmp_path / "c", progress=False)
    assert rt.dir != rr.dir
    for i in range(len(src)):
        want = tok.encode(rerender(Image.open(img / src.file(i)), tok, *variant_params(src.file(i), 2, turned)))
        assert rt.content(i, 2).tolist() == want
    assert not list((tmp_path / "c").glob(".rerender-*"))  # no temp dir left behind


def test_mixture_swaps_rerenders_into_captioned_rows_only(shared_data, tmp_path):
    img = make_image_folder(shared_data, tmp_path / "emoji", n=8, corrupt=False)
    settings = D.TokenizerSettings(image_height=4, image_width=4, caption_template="{text}; {style} style")
    (src,), _ = D.prepare_sources([D.SourceSpec(img, 1.0, "image")], settings, tmp_path / "c", progress=False)
    rr = D.prepare_rerenders(src, D.RerenderSpec(variants=4), tmp_path / "c", progress=False)
    by_caption = {bytes(src.item(i)[2 : 2 + int(src.index[i, 2])].tolist()).decode(): i for i in range(len(src))}
    assert len(by_caption) == len(src) == 8  # one item per caption

    def mixture(prob, dropout=0.0):
        return D.Mixture([src], context_len=256, n_latents=128, prompt_dropout=dropout, whole_items=True,
                         rerender=D.Rerender(prob, [rr]))  # fmt: skip

    plain = D.Mixture([src], context_len=256, n_latents=128, prompt_dropout=0.0, whole_items=True)
    for step in range(4):
        assert torch.equal(plain.batch(step, 0, 4)[0], mixture(0.0).batch(step, 0, 4)[0])
    swapped = 0
    for step in range(6):
        tokens, feats, st = mixture(1.0).batch(step, 0, 4)
        for r in range(4):
            ids = tokens[r][tokens[r] != PAD]
            cap = bytes(ids[2 : int(torch.nonzero(ids == TEXT_END)[0])].tolist()).decode()
            i = by_caption[cap]
            a, b = src.target_range(i)
            own = src.item(i)
            assert ids[:a].tolist() == own[:a].tolist() and ids[b:].tolist() == own[b:].tolist()  # caption, header, end
            assert any(ids[a:b].tolist() == rr.content(i, k).tolist() for k in range(4))
            swapped += ids[a:b].tolist() != own[a:b].tolist()
            _assert_row_layout(ids, feats[r], st["loss_mask"][r], IMAGE_BEGIN, 4 * 4 * 3)
    assert swapped >= 12
    # rows trained without their caption keep the data's own pictures
    tokens, _, st = mixture(1.0, dropout=1.0).batch(0, 0, 4)
    own = {tuple(src.item(i, drop_prompt=True).tolist()) for i in range(len(src))}
    assert all(tuple(tokens[r][tokens[r] != PAD].tolist()) in own for r in range(4))


def test_tag_caption_appends_parts_after_the_caption():
    from perceiverar.data.batches import tag_caption

    cap = b"red heart; google style"
    ids = np.array([1, 2, *cap, 7, 8, 9], dtype=np.int64)  # [BOS] [TEXT_BEGIN] caption | rest
    out, plen = tag_caption(ids, len(cap), ["re-rendered", "mirrored"])
    assert bytes(out[2 : 2 + plen].tolist()) == cap + b"; re-rendered; mirrored"
    assert out[:2].tolist() == [1, 2] and out[2 + plen :].tolist() == [7, 8, 9] and out.dtype == ids.dtype
    same, n = tag_caption(ids, len(cap), [])
    assert same is ids and n == len(cap)


def test_augment_tags_name_exactly_the_rows_that_were_augmented(shared_data, tmp_path):
    from perceiverar.data.mirror import _ORIENTED, Mirror, mirror_image_section

    # eight emoji that may be mirrored (the data's first ones are keycaps, never flipped)
    img = make_image_folder(shared_data, tmp_path / "emoji", n=8, corrupt=False,
                            keep=lambda r: r["category"] == "Smileys & Emotion" and not _ORIENTED.search(r["text"]))
    settings = D.TokenizerSettings(image_height=4, image_width=4, caption_template="{text}; {style} style")
    (src,), _ = D.prepare_sources([D.SourceSpec(img, 1.0, "image")], settings, tmp_path / "c", progress=False)
    rr = D.prepare_rerenders(src, D.RerenderSpec(variants=4), tmp_path / "c", progress=False)
    by_caption = {bytes(src.item(i)[2 : 2 + int(src.index[i, 2])].tolist()).decode(): i for i in range(len(src))}
    assert len(by_caption) == 8

    def mixture(tags, **kw):
        return D.Mixture([src], context_len=512, n_latents=256, prompt_dropout=0.0, whole_items=True,
                         rerender=D.Rerender(0.5, [rr]), mirror=Mirror(0.5), augment_tags=tags, **kw)  # fmt: skip

    seen = {(): 0, ("re-rendered",): 0, ("mirrored",): 0, ("re-rendered", "mirrored"): 0}
    for step in range(12):
        tokens, feats, st = mixture(True).batch(step, 0, 4)
        untagged = mixture(False).batch(step, 0, 4)[0]  # the same draws without the tags
        for r in range(4):
            ids = tokens[r][tokens[r] != PAD]
            cap = bytes(ids[2 : int(torch.nonzero(ids == TEXT_END)[0])].tolist()).decode()
            parts = cap.split("; ")
            tags = [t for t in parts if t in ("re-rendered", "mirrored")]
            i = by_caption["; ".join(parts[: len(parts) - len(tags)])]
            seen[tuple(tags)] += 1
            a, b = src.target_range(i)
            k = len(ids) - len(src.item(i))  # the tags' bytes move the pixels right
            pixels = ids[a + k : b + k].tolist()
            base = [src.item(i)] if "re-rendered" not in tags else [
                np.concatenate([src.item(i)[:a], rr.content(i, v), src.item(i)[b:]]) for v in range(4)]
            if "mirrored" in tags:
                base = [mirror_image_section(x) for x in base]
            assert any(pixels == x[a:b].tolist() for x in base), (cap, tags)
            plain = untagged[r][untagged[r] != PAD]
            assert ids[a + k :].tolist() == plain[a:].tolist()  # the same pictures as without tags
            _assert_row_layout(ids, feats[r], st["loss_mask"][r], IMAGE_BEGIN, 4 * 4 * 3)
    assert all(n >= 3 for n in seen.values()), seen
    # the tags come after the caption parts are thinned: never dropped with them
    tokens, _, _ = mixture(True, caption_part_dropout=0.99).batch(0, 0, 8)
    caps = [bytes(t[2 : int(torch.nonzero(t == TEXT_END)[0])].tolist()).decode() for t in tokens]
    assert sum("style" in c for c in caps) <= 2  # the other parts went (each stays with probability 0.01)
    assert sum(c.endswith(("; re-rendered", "; mirrored")) for c in caps) >= 4  # the tags stayed (3 in 4 rows tagged)
