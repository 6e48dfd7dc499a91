"""benchmarks/conv_ablation.py: the synthetic two-object set says what its captions say, and the probes score
captions the way the model's own likelihood does."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import conv_ablation as CA
from benchmarks import image_measures as M
from perceiverar import PerceiverAR, PerceiverARConfig
from perceiverar import data as D
from perceiverar.evaluate import score_item
from tokenizers_mm.image import ImageTokenizer, cube_palette


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny forwards: on a shared 2-core machine a second intra-op thread only spin-waits (minutes, not seconds)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_colours_are_named_as_image_measures_names_them():
    for name, rgb in CA.COLOURS.items():
        assert M.dominant_colour(np.full((4, 4, 3), rgb, np.uint8)) == name


def test_shapes_differ_and_fit_their_half():
    masks = {(s, k): CA.shape_mask(s, k) for s in CA.SHAPES for k in (3, 4)}
    assert len({m.tobytes() for m in masks.values()}) == 6  # six different masks
    assert masks[("square", 3)].sum() == 9 and masks[("circle", 3)].sum() == 5 and masks[("triangle", 4)].sum() == 10
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        CA.shape_mask("star", 3)


def test_the_folder_matches_its_captions(tmp_path):
    folder = CA.write_folder(tmp_path / "two", 120, seed=3)
    recs = [json.loads(x) for x in (folder / D.CAPTIONS).read_text().splitlines()]
    assert len(recs) == 120 and len(list(folder.glob("*.png"))) == 120
    held = {CA.caption(c) for c in CA.held_out_combos(3)}
    for r in recs:
        img = np.asarray(Image.open(folder / r["file"]))
        assert img.shape == (8, 8, 3)
        (cl, sl), (cr, sr) = (x.split() for x in r["text"].split(", "))
        assert CA.half_colours(img) == (cl, cr)  # left half: first named colour; right half: the second
        for half, colour, shape in ((img[:, :4], cl, sl), (img[:, 4:], cr, sr)):
            drawn = (half != 255).any(2)
            ys, xs = np.nonzero(drawn)
            box = drawn[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
            assert any(np.array_equal(box, CA.shape_mask(shape, s)) for s in (3, 4))  # the named shape, whole
            assert (half[drawn] == CA.COLOURS[colour]).all()
        assert r["text"] not in held
    # deterministic by seed; an existing folder is reused as it is
    again = CA.write_folder(tmp_path / "again", 120, seed=3)
    assert (again / D.CAPTIONS).read_text() == (folder / D.CAPTIONS).read_text()
    assert all((again / r["file"]).read_bytes() == (folder / r["file"]).read_bytes() for r in recs[:10])
    mtime = (folder / "00000.png").stat().st_mtime_ns
    assert CA.write_folder(folder, 120, seed=3) == folder and (folder / "00000.png").stat().st_mtime_ns == mtime
    # the trainer reads it: 120 captioned images, none skipped
    entries, skipped = D.list_entries(folder, "image")
    assert len(entries) == 120 and not skipped


def test_held_out_combos_and_swaps():
    held = CA.held_out_combos(0)
    assert len(CA.all_combos()) == 324 and len(held) == 40 and held == CA.held_out_combos(0) != CA.held_out_combos(1)
    combo = ("red", "square", "blue", "circle")
    assert CA.caption(CA.order_swapped(combo)) == "blue square, red circle"
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = CA.colour_swapped(combo, rng)
        diff = [i for i in range(4) if s[i] != combo[i]]
        assert len(diff) == 1 and diff[0] in (0, 2) and s[diff[0]] not in ("red", "blue")
    assert max(CA.item_tokens(c) for c in CA.all_combos()) == 9 + 64 + len("orange triangle, purple triangle")


def _tiny_model(conv_kernel: int = 4) -> PerceiverAR:
    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig.preset("debug", context_len=256, n_latents=128, conv_kernel=conv_kernel))
    with torch.no_grad():  # off the zero starts (output head, convolution): the caption must change the scores
        for w in model.parameters():
            w.add_(torch.randn_like(w), alpha=0.1)
    return model.eval()


def test_image_bits_equals_the_score_of_the_same_item_from_the_token_cache(tmp_path):
    """image_bits of an image under its own caption = the score of that item as the trainer's cache lays it out."""
    folder = CA.write_folder(tmp_path / "two", 40, seed=0)
    tok = ImageTokenizer(8, 8, mode="palette", palette=cube_palette())
    settings = D.TokenizerSettings(image_height=8, image_width=8, image_mode="palette",
                                   image_palette=tuple(map(tuple, cube_palette().tolist())))  # fmt: skip
    src = D.prepare_source(D.SourceSpec(folder, 1.0, "image"), settings, tmp_path / "cache", progress=False,
                           log=lambda m: None)  # fmt: skip
    model = _tiny_model()
    recs = {json.loads(x)["file"]: json.loads(x)["text"] for x in (folder / D.CAPTIONS).read_text().splitlines()}
    for i in (0, 7):
        ids = src.item(i)
        nats, n = score_item(model, ids, src.features(ids), src.target_range(i))
        bits, m = CA.image_bits(model, tok, recs[src.file(i)], Image.open(folder / src.file(i)))
        assert m == n == 64 and bits == pytest.approx(nats / math.log(2), rel=1e-5)


def test_probe_on_a_tiny_case():
    """Each row holds the bits image_bits gives for its captions; the summary is their paired difference."""
    model = _tiny_model()
    tok = ImageTokenizer(8, 8, mode="palette", palette=cube_palette())
    items = CA.sample_items(6, 0, [("red", "square", "blue", "circle"), ("green", "circle", "green", "triangle")])
    res = CA.probe(model, tok, items, seed=0)
    rows = res["per_item"]
    assert res["items"] == 6 and len(rows) == 6
    same = [r for r in rows if r["caption"] == "green circle, green triangle"]
    assert all("order_swap" not in r for r in same) and res["order_items"] == 6 - len(same)
    for r, (combo, img) in zip(rows, items):
        assert r["true"] == pytest.approx(CA.image_bits(model, tok, CA.caption(combo), img)[0], abs=1e-3)
        if "order_swap" in r:
            assert r["order_swapped_caption"] == "blue square, red circle"
            swapped = CA.image_bits(model, tok, r["order_swapped_caption"], img)[0]
            assert r["order_swap"] == pytest.approx(swapped, abs=1e-3)
        assert r["colour_swap"] != r["true"]  # the caption changes the prediction
    d = np.asarray([r["colour_swap"] - r["true"] for r in rows])
    assert res["colour_swap_minus_true_bits"]["mean"] == pytest.approx(d.mean(), abs=0.01)
    assert res["colour_swap_minus_true_bits"]["stderr"] == pytest.approx(d.std(ddof=1) / math.sqrt(6), abs=0.01)
    assert res["bits_per_pixel_token"] == pytest.approx(np.mean([r["true"] for r in rows]) / 64, abs=1e-3)


def test_generation_probe_reads_the_halves():
    """A stand-in pipeline that draws exactly the caption (or its mirror) is scored as matching (or swapped)."""

    class Drawer:
        def __init__(self, mirror: bool):
            self.mirror = mirror

        def generate_image(self, text, **kw):
            (cl, sl), (cr, sr) = (x.split() for x in text.split(", "))
            objs = [(cl, sl, 3, 0, 0), (cr, sr, 3, 0, 0)]
            return [Image.fromarray(CA.draw(objs[::-1] if self.mirror else objs))]

    combos = [("red", "square", "blue", "circle"), ("yellow", "triangle", "purple", "square")]
    ok, images = CA.generation_probe(Drawer(False), combos, temperature=0.5)
    assert (ok["left_matches"], ok["right_matches"], ok["both_match"], ok["order_swapped"]) == (1, 1, 1, 0)
    assert len(images) == 2 and images[0].shape == (8, 8, 3)
    bad, _ = CA.generation_probe(Drawer(True), combos, temperature=0.5)
    assert (bad["left_matches"], bad["both_match"], bad["order_swapped"], bad["blank"]) == (0, 0, 1, 0)


def test_bad_options(capsys):
    with pytest.raises(SystemExit):
        CA.parse_args(["--n-latents", "64"])
    assert "the longest item is 105 tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        CA.parse_args(["--kernels", "4", "4"])


@pytest.mark.slow
def test_a_tiny_end_to_end_run(tmp_path):
    """Both arms through the real trainer for a few steps, then every probe (about a minute on a busy CPU)."""
    out = tmp_path / "res.json"
    res = CA.main(["--images", "200", "--steps", "4", "--batch-size", "4", "--probe-items", "3", "--gen-captions", "2",
                   "--work", str(tmp_path / "work"), "--out", str(out)])  # fmt: skip
    saved = json.loads(out.read_text())
    assert set(saved["arms"]) == {"conv0", "conv4"} and saved["arms"]["conv4"]["command"].count("--conv-kernel 4") == 1
    for arm in res["arms"].values():
        assert arm["training"]["steps"] == 4 and arm["training"]["wall_seconds"] > 0
        assert arm["seen"]["items"] == 3 and arm["held_out"]["generation"]["images"] == 2
    assert (tmp_path / "res.png").is_file()
