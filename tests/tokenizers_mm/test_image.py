from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokenizers_mm import ImageTokenizer, TokenizerError

EMOJI = Path(__file__).resolve().parents[3] / "shared" / "data" / "emoji"
if not EMOJI.is_dir():
    EMOJI = Path("/work/shared/data/emoji")


def _emoji_files(n=6):
    if not EMOJI.is_dir():
        pytest.skip(f"emoji data not found at {EMOJI}")
    files = sorted((EMOJI / "google").glob("*.png"))[::600][: n // 2] + sorted((EMOJI / "twitter").glob("*.png"))[::600][: n // 2]
    return files


def test_emoji_round_trip_pixel_exact():
    tok = ImageTokenizer(64, 64)
    for f in _emoji_files():
        ids = tok.encode(f)
        assert len(ids) == tok.n_tokens == 12288 and min(ids) >= 256 and max(ids) < 512
        src = Image.open(f).convert("RGBA")
        expected = Image.alpha_composite(Image.new("RGBA", src.size, (255, 255, 255, 255)), src).convert("RGB")
        assert np.array_equal(np.asarray(tok.decode(ids)), np.asarray(expected)), f


def test_random_round_trip_awkward_size():
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tok = ImageTokenizer(5, 7)
    ids = tok.encode(Image.fromarray(a))
    assert ids[:3] == (a[0, 0].astype(int) + 256).tolist() and ids[3:6] == (a[0, 1].astype(int) + 256).tolist()  # raster, RGB
    assert np.array_equal(np.asarray(tok.decode(ids)), a)


def test_rgba_composited_on_white_and_modes():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # transparent -> white
    rgba[1, 0] = (0, 0, 0, 128)  # half black -> grey
    tok = ImageTokenizer(2, 2)
    out = np.asarray(tok.decode(tok.encode(Image.fromarray(rgba, "RGBA"))))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)
    assert 125 <= out[1, 0, 0] <= 128
    for mode in ("L", "P", "CMYK", "LA", "I;16"):
        assert len(tok.encode(Image.new(mode, (2, 2)))) == 12


@pytest.mark.parametrize("policy", ["fit", "crop", "stretch"])
def test_resize_policy(policy):
    # a 40x20 (w x h) image: left half red, right half blue
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (255, 0, 0)
    a[:, 20:] = (0, 0, 255)
    out = np.asarray(ImageTokenizer(8, 8, resize=policy).preprocess(Image.fromarray(a))).astype(int)
    assert out.shape == (8, 8, 3)
    if policy == "fit":  # 8x4 band in the middle, white padding above and below
        assert (out[0] == 255).all() and (out[-1] == 255).all() and tuple(out[4, 0]) == (255, 0, 0)
    elif policy == "crop":  # centre 20x20 of the original: left red, right blue, no white
        assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, -1]) == (0, 0, 255) and (out < 250).any(-1).all()
    else:
        assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[-1, -1]) == (0, 0, 255)


def test_partial_decode():
    tok = ImageTokenizer(4, 4)
    ids = [256] * (4 * 3 + 2)  # one black row + 2/3 of a pixel
    out = np.asarray(tok.decode(ids))
    assert (out[0] == 0).all() and tuple(out[1, 0]) == (0, 0, 255) and (out[2:] == 255).all()
    with pytest.raises(TokenizerError, match="expected 48"):
        tok.decode(ids, partial_ok=False)
    assert np.asarray(tok.decode([])).min() == 255


def test_errors(tmp_path):
    tok = ImageTokenizer(4, 4)
    with pytest.raises(TokenizerError, match=r"id 600 .*position 1"):
        tok.decode([256, 600])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(TokenizerError, match="broken.png"):
        tok.encode(bad)
    with pytest.raises(TokenizerError, match="missing.png"):
        tok.encode(tmp_path / "missing.png")
    with pytest.raises(TokenizerError, match="257"):
        ImageTokenizer(257, 4)
    ImageTokenizer(32, 32).check_fits(4096)
    with pytest.raises(TokenizerError, match=r"64x64 image needs 12297 .* holds 8192"):
        ImageTokenizer(64, 64).check_fits(8192)


# ------------------------------------------------------------------------------------------- palette mode


def _palette_tok(side=4):
    from tokenizers_mm.image import cube_palette

    return ImageTokenizer(side, side, mode="palette", palette=cube_palette())


def test_palette_round_trip_is_exact_on_palette_colours_and_nearest_otherwise():
    from tokenizers_mm.image import cube_palette

    pal = cube_palette()
    tok = _palette_tok(4)
    rng = np.random.default_rng(0)
    a = pal[rng.integers(0, len(pal), 16)].reshape(4, 4, 3)
    ids = tok.encode(a)
    assert len(ids) == tok.n_tokens == 16 and min(ids) >= 256 and max(ids) < 256 + len(pal)
    assert np.array_equal(np.asarray(tok.decode(ids)), a)
    # an off-palette colour goes to its nearest palette colour (brute force over the palette)
    b = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    got = np.asarray(tok.decode(tok.encode(b))).reshape(-1, 3).astype(int)
    d = ((b.reshape(-1, 1, 3).astype(int) - pal[None].astype(int)) ** 2).sum(-1)
    assert np.array_equal(((got - b.reshape(-1, 3)) ** 2).sum(-1), d.min(1))


def test_palette_sequence_layout_features_and_parse():
    from tokenizers_mm.vocab import PALETTE_BEGIN, build_sequence, position_features, split_sequence

    tok = _palette_tok(3)
    ids = tok.encode(np.full((3, 3, 3), 255, np.uint8))
    seq = build_sequence("white", "image", ids, height=3, width=3, image_mode="palette")
    assert PALETTE_BEGIN in seq and len(seq) == len("white") + 9 + 9
    parsed = split_sequence(seq)
    assert parsed.modality == "image" and parsed.image_mode == "palette" and parsed.target == ids and parsed.complete
    f = position_features(seq)[:, :3]  # (T, 3): row, column, channel (the word slot: tests/.../test_features.py)
    start = seq.index(PALETTE_BEGIN) + 3
    assert [tuple(r) for r in f[start : start + 9]] == [(r + 1, c + 1, 4) for r in range(3) for c in range(3)]
    with pytest.raises(TokenizerError, match="3x3x1"):
        build_sequence("x", "image", ids[:-1], height=3, width=3, image_mode="palette")


def test_palette_config_round_trip_and_errors():
    tok = _palette_tok(5)
    again = ImageTokenizer.from_dict(tok.to_dict())
    assert again.mode == "palette" and np.array_equal(again.palette, tok.palette) and again.n_tokens == 25
    assert ImageTokenizer.from_dict({"height": 2, "width": 2}).mode == "subpixel"
    with pytest.raises(TokenizerError, match="needs a palette"):
        ImageTokenizer(4, 4, mode="palette")
    with pytest.raises(TokenizerError, match="K x 3"):
        ImageTokenizer(4, 4, mode="palette", palette=[[1, 2]])
    with pytest.raises(TokenizerError, match="0..255"):
        ImageTokenizer(4, 4, mode="palette", palette=[[1, 2, 300]])
    with pytest.raises(TokenizerError, match="unknown image mode"):
        ImageTokenizer(4, 4, mode="hsv")
    with pytest.raises(TokenizerError, match="colour id"):
        tok.decode([256 + 300])


# ------------------------------------------------------------------------------------------- sketch mode


def _sketch_tok(h=16, w=16):
    from tokenizers_mm.image import cube_palette

    return ImageTokenizer(h, w, mode="sketch", palette=cube_palette())


@pytest.mark.parametrize("h,w", [(16, 16), (6, 10), (3, 5)])
def test_sketch_is_each_blocks_most_common_colour_then_the_pixels(h, w):
    tok = _sketch_tok(h, w)
    pal = tok.palette
    rng = np.random.default_rng(h * w)
    idx = rng.integers(0, 5, (h, w)) * 40  # a few palette colours, so that blocks have a clear winner or a tie
    ids = tok.encode(pal[idx])
    sh, sw = -(-h // 4), -(-w // 4)
    assert tok.sketch_shape == (sh, sw) and len(ids) == tok.n_tokens == sh * sw + h * w
    # the sketch, counted block by block with a dict (ties: the lowest colour id)
    want = []
    for r in range(sh):
        for c in range(sw):
            counts: dict[int, int] = {}
            for v in idx[4 * r : 4 * r + 4, 4 * c : 4 * c + 4].reshape(-1).tolist():
                counts[v] = counts.get(v, 0) + 1
            want.append(min(counts, key=lambda v: (-counts[v], v)))
    assert [t - 256 for t in ids[: sh * sw]] == want
    assert [t - 256 for t in ids[sh * sw :]] == idx.reshape(-1).tolist()
    assert np.array_equal(np.asarray(tok.decode(ids)), pal[idx])  # decoding drops the sketch


def test_sketch_partial_decode_shows_the_sketch_where_pixels_are_missing():
    tok = _sketch_tok(8, 8)
    pal = tok.palette
    img = np.full((8, 8, 3), 255, np.uint8)
    img[4:, 4:] = pal[180]  # the bottom-right block in one colour
    ids = tok.encode(img)
    assert [t - 256 for t in ids[:4]] == [tok.quantize(img[0, 0])] * 3 + [180]
    only_sketch = np.asarray(tok.decode(ids[:4]))
    assert np.array_equal(only_sketch, tok.palette[tok.quantize(img)])
    half = np.asarray(tok.decode(ids[:2]))  # half the sketch: the rest stays the background
    assert (half[4:] == 255).all() and np.array_equal(half[:4], tok.palette[tok.quantize(img)][:4])
    with pytest.raises(TokenizerError, match="with its sketch"):
        tok.decode(ids[:-1], partial_ok=False)


def test_sketch_sequence_layout_features_parse_and_config():
    from tokenizers_mm.vocab import SKETCH_BEGIN, build_sequence, position_features, split_sequence

    tok = _sketch_tok(6, 10)
    ids = tok.encode(np.full((6, 10, 3), 255, np.uint8))
    seq = build_sequence("white", "image", ids, height=6, width=10, image_mode="sketch")
    assert SKETCH_BEGIN in seq and len(seq) == len("white") + 9 + 6 + 60
    parsed = split_sequence(seq)
    assert parsed.image_mode == "sketch" and parsed.target == ids and parsed.complete
    f = position_features(seq)[:, :3]  # (T, 3): row, column, channel
    start = seq.index(SKETCH_BEGIN) + 3
    # sketch tokens at their block's centre pixel (clipped to the image), channel 5; then the pixels as in palette mode
    want = [(min(4 * r + 2, 5) + 1, min(4 * c + 2, 9) + 1, 5) for r in range(2) for c in range(3)]
    want += [(r + 1, c + 1, 4) for r in range(6) for c in range(10)]
    assert [tuple(x) for x in f[start : start + 66]] == want
    assert tuple(f[start + 66]) == (0, 0, 0)  # IMAGE_END
    # token by token (generation) gives the same features
    from tokenizers_mm.features import FeatureTracker

    tr = FeatureTracker()
    assert np.array_equal(np.stack([tr.push(t) for t in seq]), position_features(seq))
    with pytest.raises(TokenizerError, match="after a 2x3 sketch"):
        build_sequence("x", "image", ids[:-1], height=6, width=10, image_mode="sketch")
    again = ImageTokenizer.from_dict(tok.to_dict())
    assert again.mode == "sketch" and again.n_tokens == 66 and np.array_equal(again.palette, tok.palette)
    with pytest.raises(TokenizerError, match="sketch mode needs a palette"):
        ImageTokenizer(4, 4, mode="sketch")


def test_fit_palette_recovers_the_colours_of_a_few_colour_set():
    from tokenizers_mm.image import fit_palette

    colours = np.array([[255, 0, 0], [0, 0, 255], [255, 255, 255], [20, 200, 20]], np.uint8)
    rng = np.random.default_rng(1)
    imgs = [colours[rng.integers(0, 4, (8, 8))] for _ in range(10)]
    pal = fit_palette(imgs, k=4)
    assert sorted(map(tuple, pal.tolist())) == sorted(map(tuple, colours.tolist()))
