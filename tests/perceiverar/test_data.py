"""Dataset preparation (cache, skipped files, splits, errors) and the crop mixture, on files copied from shared data."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from perceiverar import data as D
from perceiverar.data.balance import item_groups
from tokenizers_mm.features import text_features
from tokenizers_mm.ids import N_FEATURES, PARAGRAPH_SLOT
from tokenizers_mm.vocab import BOS, IMAGE_BEGIN, PIXEL_OFFSET, SEP, TEXT_BEGIN, TEXT_END, position_features

N_EMOJI = 8


def make_image_folder(shared: Path, dest: Path, n: int = N_EMOJI, corrupt: bool = True, keep=None) -> Path:
    """``n`` emoji with their captions.jsonl lines (the first ones, or the first for which ``keep(record)`` holds),
    plus (``corrupt``) a truncated PNG and a non-image .png."""
    src = shared / "emoji"
    lines = [json.loads(x) for x in (src / "captions.jsonl").read_text().splitlines()]
    lines = [r for r in lines if keep is None or keep(r)][:n]
    for rec in lines:
        (dest / rec["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / rec["file"], dest / rec["file"])
    if corrupt:
        good = (src / lines[0]["file"]).read_bytes()
        (dest / "google" / "truncated.png").write_bytes(good[: len(good) // 3])
        (dest / "google" / "notapng.png").write_text("this is not an image")
        lines += [{"file": "google/truncated.png", "text": "broken"}, {"file": "google/notapng.png", "text": "junk"}]
    (dest / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return dest


def make_text_folder(shared: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(shared / "shakespeare" / "lovers_complaint_gut.txt", dest / "lovers_complaint.txt")
    return dest


@pytest.fixture
def folders(shared_data, tmp_path):
    img = make_image_folder(shared_data, tmp_path / "emoji")
    txt = make_text_folder(shared_data, tmp_path / "text")
    return img, txt, tmp_path / "cache"


SETTINGS = D.TokenizerSettings(image_height=8, image_width=8)


def test_prepare_images_and_text(folders, monkeypatch):
    img, txt, cache = folders
    assert D.detect_modality(img) == "image" and D.detect_modality(txt) == "text"
    (src_img, src_txt), codec = D.prepare_sources([D.parse_data_arg(f"{img}:3"), D.parse_data_arg(str(txt))], SETTINGS,
                                                  cache, progress=False)  # fmt: skip
    assert codec is None and src_img.weight == 3.0
    # the two corrupt files are skipped, counted and listed; the good ones are all there
    m = src_img.manifest
    assert m["n_skipped"] == 2 and {s["file"] for s in m["skipped"]} == {"google/truncated.png", "google/notapng.png"}
    assert len(src_img) == N_EMOJI and m["n_train"] + m["n_val"] == N_EMOJI and m["n_val"] >= 1
    # an item is the exact build_sequence layout, memory-mapped as int16
    ids = src_img.item(0)
    plen = int(src_img.index[0, 2])
    caption = json.loads((img / "captions.jsonl").read_text().splitlines()[0])["text"]
    assert bytes(ids[2 : 2 + plen].tolist()).decode() == caption
    assert ids[0] == BOS and ids[1] == TEXT_BEGIN and ids[2 + plen] == TEXT_END and ids[3 + plen] == SEP
    assert ids[4 + plen] == IMAGE_BEGIN and len(ids) == plen + 9 + 8 * 8 * 3
    a, b = src_img.target_range(0)
    assert b - a == 192 and (ids[a:b] >= PIXEL_OFFSET).all() and (ids[a:b] < PIXEL_OFFSET + 256).all()
    assert isinstance(src_img.ids, np.memmap) and src_img.ids.dtype == np.int16
    # a crop that excludes the header still carries the features of the full sequence
    crop_ids, crop_f = src_img.crop(0, 40, 120)
    np.testing.assert_array_equal(crop_ids, ids[40:120])
    np.testing.assert_array_equal(crop_f, position_features(ids)[40:120])
    assert crop_f[:, 0].max() > 0
    # the single text document: whole file as bytes, its last 5 % held out
    doc = (txt / "lovers_complaint.txt").read_bytes()
    assert src_txt.manifest["n_train"] == 1 and src_txt.manifest["n_val"] == 1
    tr, va = src_txt.train_items[0], src_txt.val_items[0]
    joined = np.concatenate([src_txt.item(tr), src_txt.item(va)])
    assert bytes(joined[2:-2].tolist()) == doc
    assert 0.03 < src_txt.length(va) / len(joined) < 0.07
    # a crop from inside the document: the word slot of the crop, the paragraph slot counted from the start
    whole = position_features(src_txt.item(tr))
    assert len(set(whole[:5000, PARAGRAPH_SLOT].tolist())) > 3  # the first paragraphs, then the last bucket
    for a, b in ((1, 300), (60, 900), (5000, 5400)):
        crop_ids, crop_f = src_txt.crop(tr, a, b)
        np.testing.assert_array_equal(crop_f[:, :PARAGRAPH_SLOT], text_features(crop_ids)[:, :PARAGRAPH_SLOT])
        np.testing.assert_array_equal(crop_f[:, PARAGRAPH_SLOT], whole[a:b, PARAGRAPH_SLOT])
    # re-running reuses the cache: nothing is tokenized again
    monkeypatch.setattr(D.cache, "_tokenize", lambda *a, **k: pytest.fail("re-tokenized a cached folder"))
    again, _ = D.prepare_sources([D.parse_data_arg(str(img)), D.parse_data_arg(str(txt))], SETTINGS, cache, progress=False)
    assert again[0].dir == src_img.dir and again[1].dir == src_txt.dir


def test_cache_key_follows_files_and_settings(folders):
    img, _, cache = folders
    a = D.prepare_source(D.parse_data_arg(str(img)), SETTINGS, cache, progress=False)
    b = D.prepare_source(D.parse_data_arg(str(img)), D.TokenizerSettings(image_height=4, image_width=4), cache, progress=False)
    assert a.dir != b.dir and len(b.item(0)) == len(a.item(0)) - 8 * 8 * 3 + 4 * 4 * 3
    (img / "google" / "notapng.png").unlink()  # the listing changed
    c = D.prepare_source(D.parse_data_arg(str(img)), SETTINGS, cache, progress=False)
    assert c.dir != a.dir and c.manifest["n_skipped"] == 2  # now "listed but missing"
    assert any("missing" in s["reason"] for s in c.manifest["skipped"])


def test_cache_key_follows_contents_not_mtimes(folders, monkeypatch):
    img, _, cache = folders
    a = D.prepare_source(D.parse_data_arg(str(img)), SETTINGS, cache, progress=False)
    png = img / "google" / "notapng.png"
    stamp = png.stat()
    os.utime(png, (1, 1))  # a re-copied folder: new mtimes, the same bytes: the cache is reused
    monkeypatch.setattr(D.cache, "_tokenize", lambda *a, **k: pytest.fail("re-tokenized an unchanged folder"))
    assert D.prepare_source(D.parse_data_arg(str(img)), SETTINGS, cache, progress=False).dir == a.dir
    monkeypatch.undo()
    # an edit that keeps the size and the mtime is still a new folder
    text = png.read_bytes()
    png.write_bytes(text[::-1])
    os.utime(png, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert png.stat().st_size == len(text) and png.stat().st_mtime_ns == stamp.st_mtime_ns
    assert D.prepare_source(D.parse_data_arg(str(img)), SETTINGS, cache, progress=False).dir != a.dir


def test_sidecar_txt_captions(shared_data, tmp_path):
    img = make_image_folder(shared_data, tmp_path / "emoji", n=3, corrupt=False)
    lines = [json.loads(x) for x in (img / "captions.jsonl").read_text().splitlines()]
    (img / "captions.jsonl").unlink()
    for rec in lines[:2]:
        (img / rec["file"]).with_suffix(".txt").write_text(rec["text"] + "\n")
    assert D.detect_modality(img) == "image"  # .txt captions do not make it a text folder
    src = D.prepare_source(D.parse_data_arg(str(img)), SETTINGS, tmp_path / "c", progress=False)
    assert len(src) == 2 and src.manifest["n_skipped"] == 1 and "no caption" in src.manifest["skipped"][0]["reason"]
    texts = {bytes(src.item(i)[2 : 2 + src.index[i, 2]].tolist()).decode() for i in range(2)}
    assert texts == {r["text"] for r in lines[:2]}


def test_errors(shared_data, tmp_path):
    with pytest.raises(D.DatasetError, match="does not exist"):
        D.parse_data_arg(str(tmp_path / "nope"))
    with pytest.raises(D.DatasetError, match="weight must be a positive"):
        D.parse_data_arg(f"{tmp_path}:-1")
    # images without any caption
    img = make_image_folder(shared_data, tmp_path / "nocap", n=2, corrupt=False)
    (img / "captions.jsonl").unlink()
    with pytest.raises(D.DatasetError, match="no captions"):
        D.prepare_source(D.parse_data_arg(str(img)), SETTINGS, tmp_path / "c", progress=False)
    # every file corrupt: a clear "empty" message naming a skipped file
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_text("not a png")
    (bad / "captions.jsonl").write_text(json.dumps({"file": "a.png", "text": "x"}) + "\n")
    with pytest.raises(D.DatasetError, match=r"empty.*a\.png"):
        D.prepare_source(D.parse_data_arg(str(bad)), SETTINGS, tmp_path / "c", progress=False)
    # nothing usable at all
    (tmp_path / "void").mkdir()
    (tmp_path / "void" / "notes.md").write_text("hi")
    with pytest.raises(D.DatasetError, match="nothing to train on"):
        D.prepare_sources([D.parse_data_arg(str(tmp_path / "void"))], SETTINGS, tmp_path / "c", progress=False)


def test_val_split_is_deterministic():
    names = [f"google/{i:05x}.png" for i in range(4000)]
    flags = [D.is_val(n) for n in names]
    assert flags == [D.is_val(n) for n in names]
    assert 0.035 < np.mean(flags) < 0.065


def test_mixture_crops(folders):
    img, txt, cache = folders
    sources, _ = D.prepare_sources([D.parse_data_arg(str(img)), D.parse_data_arg(str(txt))], SETTINGS, cache, progress=False)
    L, N = 256, 32
    mix = D.Mixture(sources, L, N, prompt_dropout=0.5, seed=3)
    lens, dropped = set(), 0
    for step in range(40):
        tok, feat, st = mix.batch(step, 0, 4)
        tok2, feat2, _ = mix.batch(step, 0, 4)
        assert (tok == tok2).all() and (feat == feat2).all()  # a pure function of (seed, step, micro)
        T = tok.shape[1]
        assert feat.shape == (4, T, N_FEATURES) and T == st["seq_len"]
        lens.add(T)
        assert T <= L + 1
        dropped += st["dropped_prompts"]
        for row in tok.tolist():
            if any(PIXEL_OFFSET <= t < PIXEL_OFFSET + 256 for t in row):
                assert row[:2] == [BOS, TEXT_BEGIN], "an image crop must be a prefix of its item"
                if row[2] == TEXT_END:
                    assert row[3] == SEP  # a dropped prompt is the empty-prompt layout
    assert dropped > 0 and len(lens) > 10  # varied lengths: every prefix length is trained
    # the shortest image item bounds the length; N + 1 is the usual minimum
    shortest = min(s.length(i, True) for s in sources for i in s.train_items)
    assert min(lens) >= min(N + 1, shortest)


def test_caption_template_uses_captions_fields(folders):
    img, _, cache = folders
    lines = {json.loads(x)["file"]: json.loads(x) for x in (img / "captions.jsonl").read_text().splitlines()}
    settings = D.TokenizerSettings(image_height=8, image_width=8, caption_template="{text}; {style} style")
    src = D.prepare_source(D.parse_data_arg(str(img)), settings, cache, progress=False)
    plain = D.prepare_source(D.parse_data_arg(str(img)), SETTINGS, cache, progress=False)
    assert src.dir != plain.dir  # other captions, another cache
    for i in range(len(src)):
        rec = lines[src.file(i)]
        prompt = bytes(src.item(i)[2 : 2 + src.index[i, 2]].astype(np.uint8)).decode()
        assert prompt == f"{rec['text']}; {rec['style']} style"
    bad = D.TokenizerSettings(image_height=8, image_width=8, caption_template="{text} by {artist}")
    with pytest.raises(D.DatasetError, match="'artist'"):
        D.prepare_source(D.parse_data_arg(str(img)), bad, cache, progress=False)


def test_bury_caption_places_the_caption():
    cap = np.frombuffer(b"a red apple", np.uint8).astype(np.int64)
    fill = np.frombuffer(b"To be or not to be", np.uint8).astype(np.int64)
    as_bytes = lambda a: bytes(np.asarray(a, np.uint8))  # noqa: E731
    assert as_bytes(D.bury_caption(cap, fill, 0.0)) == b"a red apple\n\nTo be or not to be"
    assert as_bytes(D.bury_caption(cap, fill, 1.0)) == b"To be or not to be\n\na red apple"
    assert as_bytes(D.bury_caption(cap, fill, 0.5)) == b"To be or \n\na red apple\n\nnot to be"
    assert as_bytes(D.bury_caption(cap[:0], fill, 0.3)) == b"To be or not to be"  # no caption: filler only
    assert as_bytes(D.bury_caption(cap, fill[:0], 0.7)) == b"a red apple"


@pytest.mark.parametrize("places,want", [(None, {"start", "middle", "end"}), ("end, start", {"start", "end"})])
def test_mixture_buries_captions_in_filler(folders, places, want):
    img, txt, cache = folders
    (src,) , _ = D.prepare_sources([D.parse_data_arg(str(img))], SETTINGS, cache, progress=False)
    text = D.prepare_source(D.parse_data_arg(str(txt), "text"), SETTINGS, cache, progress=False)
    filler = D.Filler(text, prob=0.5) if places is None else D.Filler(text, prob=0.5, places=places)
    assert filler.text.min() >= 0 and filler.text.max() < 256
    L, N = 4096, 32
    mix = D.Mixture([src], L, N, prompt_dropout=0.2, seed=1, filler=filler)
    captions: dict[bytes, list[int]] = {}  # google and twitter versions share a caption
    for i in src.train_items:
        captions.setdefault(bytes(src.item(int(i))[2 : 2 + src.index[i, 2]].astype(np.uint8)), []).append(int(i))
    buried = lens_max = dropped = 0
    where = set()
    for step in range(60):
        tok, feat, st = mix.batch(step, 0, 3)
        tok2, feat2, _ = mix.batch(step, 0, 3)
        assert (tok == tok2).all() and (feat == feat2).all()  # still a pure function of (seed, step, micro)
        if "filler_bytes" not in st:
            continue
        buried += 1
        T = tok.shape[1]
        assert T == st["seq_len"] <= L + 1 and feat.shape == (3, T, N_FEATURES)
        lens_max = max(lens_max, T)
        for row, f in zip(tok.numpy(), feat.numpy()):
            assert list(row[:2]) == [BOS, TEXT_BEGIN]
            end = int(np.flatnonzero(row == TEXT_END)[0])
            prompt = bytes(row[2:end].astype(np.uint8))
            assert row[2:end].max() < 256  # the prompt is text bytes only
            # the features are exactly what the whole sequence's tracker gives (media section after the prompt)
            assert (f == position_features(row)).all()
            hits = [c for c in captions if c and c in prompt]
            if not hits:
                dropped += 1
                continue
            cap = max(hits, key=len)
            rests = [src.item(i)[2 + src.index[i, 2] :] for i in captions[cap]]
            k = T - end
            assert any((row[end:] == r[:k]).all() for r in rests)  # after the prompt: the item's header and pixels
            assert k >= min(N, len(rests[0]))  # the latents never sit on the filler
            pos = prompt.index(cap)
            where.add("start" if pos == 0 else "end" if pos + len(cap) == len(prompt) else "middle")
            if pos > 0:
                assert prompt[pos - 2 : pos] == b"\n\n"
    assert buried > 15 and dropped > 0
    assert where == want
    assert lens_max > L // 2  # long filler is drawn: distances up to the context are trained
    with pytest.raises(D.DatasetError, match=".txt documents"):
        D.Filler(src)
    for bad in ("start,middle", "", "end,end"):
        with pytest.raises(D.DatasetError, match="filler-places"):
            D.Filler(text, places=bad)


def test_filler_log_lengths_and_token_cap(folders):
    """--filler-lengths log: as many buried batches per octave of length; --filler-tokens: fewer rows of a long one."""
    img, txt, cache = folders
    (src,), _ = D.prepare_sources([D.parse_data_arg(str(img))], SETTINGS, cache, progress=False)
    text = D.prepare_source(D.parse_data_arg(str(txt), "text"), SETTINGS, cache, progress=False)
    L, N, rows = 65536, 32, 8
    lens = {}
    for kind in ("uniform", "log"):
        filler = D.Filler(text, prob=1.0, lengths=kind, max_tokens=4 * 4096)
        mix = D.Mixture([src], L, N, prompt_dropout=0.0, seed=3, filler=filler)
        seen = []
        for step in range(80):
            tok, feat, st = mix.batch(step, 0, rows)
            T = tok.shape[1]
            assert T == st["seq_len"] <= L + 1 and feat.shape[:2] == tok.shape[:2]
            assert tok.shape[0] == max(1, min(rows, 4 * 4096 // T))  # the cap keeps rows x length near 16K
            assert len(st["filler_bytes"]) == tok.shape[0]
            seen.append(T)
        lens[kind] = np.asarray(seen)
        # data-parallel: every rank gets the same rows, at least one each
        assert [filler.rows(T, 8, 2) for T in (60_000, 5_000, 4_096, 1_000)] == [2, 2, 4, 8]
        assert filler.rows(60_000, 8, 1) == 1
    octaves = np.log2(lens["log"])
    # log-uniform: short and long batches alike (each half of the octaves from the shortest need to L holds a
    # good share); uniform: mostly long, the mean over twice the log-uniform one
    mid = (octaves.min() + np.log2(L)) / 2
    assert 0.25 < (octaves < mid).mean() < 0.75 and lens["log"].max() > L // 4
    assert (lens["uniform"] > L // 8).mean() > 0.8 and lens["uniform"].mean() > 2 * lens["log"].mean()
    with pytest.raises(D.DatasetError, match="filler-lengths"):
        D.Filler(text, lengths="linear")
    with pytest.raises(D.DatasetError, match="filler-tokens"):
        D.Filler(text, max_tokens=-1)


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth not installed")
def test_prepare_audio_midi(shared_data, tmp_path):
    folder = tmp_path / "bach"
    folder.mkdir()
    caps = {json.loads(x)["file"]: json.loads(x)["text"] for x in (shared_data / "bach" / "captions.jsonl").read_text().splitlines()}
    names = ["bwv281.mid", "bwv286.mid"]  # two of the shortest chorales
    lines = [{"file": n, "text": caps[n]} for n in names] + [{"file": "broken.wav", "text": "noise"}]
    for n in names:
        shutil.copy(shared_data / "bach" / n, folder / n)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert D.detect_modality(folder) == "audio"
    settings = D.TokenizerSettings(audio_codebook_size=16, audio_fit_files=4)
    (src,), codec = D.prepare_sources([D.parse_data_arg(str(folder))], settings, tmp_path / "c", progress=False)
    assert codec is not None and (codec.dir / "codebook.safetensors").is_file()
    assert len(src) == 2 and src.manifest["n_skipped"] == 1 and src.manifest["skipped"][0]["file"] == "broken.wav"
    a, b = src.target_range(0)
    codes = src.item(0)[a:b]
    assert b - a > 100 and codes.min() >= 512 and codes.max() < 512 + 16
    feats = src.features(src.item(0))
    assert (feats[a:b, 2] == 1).all() and (feats[:a, :3] == 0).all()  # (the caption bytes have word slots)


def test_imports_stay_light_and_one_way():
    """The config never loads torchaudio (the audio tokenizer is imported on first use), evaluation never loads
    the trainer, and ``tokenizers_mm.AudioTokenizer`` still resolves."""
    code = ("import sys, perceiverar.config, perceiverar.evaluate, perceiverar.data; "
            "bad = [m for m in ('torchaudio', 'tokenizers_mm.audio', 'perceiverar.train') if m in sys.modules]; "
            "assert not bad, bad; "
            "from tokenizers_mm import AudioTokenizer, render_midi; assert 'torchaudio' in sys.modules")  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]


def _png_header(width: int, height: int) -> bytes:
    """A 45-byte PNG that claims ``width`` x ``height`` pixels and holds none (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def test_hostile_and_stray_files_are_skipped_and_listed(shared_data, tmp_path):
    """A decompression-bomb PNG, and captions.jsonl entries naming files outside the folder (which the cache key
    would not see), are skipped with a reason; the run goes on with the rest."""
    img = make_image_folder(shared_data, tmp_path / "emoji", n=3, corrupt=False)
    (img / "bomb.png").write_bytes(_png_header(30_000, 30_000))
    outside = tmp_path / "outside.png"
    shutil.copy(next((img / "google").glob("*.png")), outside)  # a real image: only the rule keeps it out
    (img / ".hidden").mkdir()
    shutil.copy(outside, img / ".hidden" / "a.png")
    lines = [{"file": "bomb.png", "text": "bomb"}, {"file": "../outside.png", "text": "up"},
             {"file": str(outside), "text": "absolute"}, {"file": ".hidden/a.png", "text": "hidden"}]  # fmt: skip
    with open(img / "captions.jsonl", "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in lines))
    src = D.prepare_source(D.parse_data_arg(str(img)), SETTINGS, tmp_path / "cache", progress=False, log=lambda m: None)
    assert len(src) == 3
    why = {s["file"]: s["reason"] for s in src.manifest["skipped"]}
    assert "DecompressionBomb" in why["bomb.png"] or "pixels" in why["bomb.png"], why
    assert "inside the data folder" in why["../outside.png"] and "absolute" in why[str(outside)]
    assert "hidden" in why[".hidden/a.png"]


def test_items_below_the_minimum_length_are_skipped(shared_data, tmp_path):
    txt = make_text_folder(shared_data, tmp_path / "text")
    (txt / "stub.txt").write_text("Act I.")  # 6 bytes: no document to learn from
    src = D.prepare_source(D.parse_data_arg(str(txt)), SETTINGS, tmp_path / "cache", progress=False, log=lambda m: None)
    assert src.manifest["items"][0] == "lovers_complaint.txt" and len(src.manifest["items"]) == 2  # train + #tail
    assert src.manifest["skipped"] == [{"file": "stub.txt", "reason": "TokenizerError: too short: 6 bytes of text "
                                        f"(at least {D.cache.MIN_TEXT_BYTES} needed)"}]  # fmt: skip


def test_palette_cache_and_whole_item_batches(folders):
    """Palette mode: the fitted palette is cached and keys the token cache; whole items come right-padded with a
    loss mask on exactly each item's target and end markers, the same ids as the item itself."""
    import torch

    from tokenizers_mm.image import ImageTokenizer
    from tokenizers_mm.vocab import IMAGE_END, PAD, PALETTE_BEGIN

    img, _, cache = folders
    spec = D.SourceSpec(img, 1.0, "image")
    pal = D.fit_source_palette([spec], SETTINGS, cache, colours=16, log=lambda m: None)
    assert len(pal) == 16 and D.fit_source_palette([spec], SETTINGS, cache, colours=16, log=None) == pal  # cached
    sub = D.prepare_source(spec, SETTINGS, cache, progress=False)
    settings = D.TokenizerSettings(image_height=8, image_width=8, image_mode="palette", image_palette=pal)
    src = D.prepare_source(spec, settings, cache, progress=False)
    assert src.dir != sub.dir and src.manifest["tokenizer"]["mode"] == "palette"
    tok = ImageTokenizer(8, 8, mode="palette", palette=pal)
    i = int(src.train_items[0])
    ids = src.item(i)
    a, b = src.target_range(i)
    assert ids[a - 3] == PALETTE_BEGIN and b - a == 64 and ids[b] == IMAGE_END
    assert list(ids[a:b]) == tok.encode(img / src.file(i))

    mix = D.Mixture([src], context_len=256, n_latents=128, prompt_dropout=0.5, whole_items=True)
    for step in range(4):
        tokens, feats, st = mix.batch(step, 0, 3)
        mask = st["loss_mask"]
        assert tokens.shape == mask.shape == feats.shape[:2] and st["seq_len"] == tokens.shape[1]
        for r in range(3):
            row = tokens[r]
            n = int((row != PAD).sum())
            assert (row[n:] == PAD).all() and not mask[r, n:].any() and not feats[r, n:].any()
            first = int(torch.nonzero(row == PALETTE_BEGIN)[0]) + 3
            assert mask[r, first:n].all() and not mask[r, :first].any()  # pixels, IMAGE_END, EOS; no caption/header
            assert torch.equal(feats[r, :n], torch.from_numpy(position_features(row[:n].tolist())))
    # items longer than the latents get uniform windows (next test); without whole_items, prefix crops, no mask
    assert "n_latents" in D.Mixture([src], context_len=256, n_latents=16, whole_items=True).batch(0, 0, 2)[2]
    assert "loss_mask" not in D.Mixture([src], context_len=256, n_latents=16).batch(0, 0, 2)[2]


def _unpadded_row(tokens, r: int):
    """Row ``r`` of a whole-item batch without its PAD, and its caption's text."""
    import torch

    from tokenizers_mm.vocab import PAD

    ids = tokens[r][tokens[r] != PAD]
    return ids, bytes(ids[2 : int(torch.nonzero(ids == TEXT_END)[0])].tolist()).decode()


def _assert_row_layout(ids, feats, mask, begin: int, n_target: int) -> None:
    """A whole-item row's features are its own sequence's, and its loss starts at its ``n_target`` media tokens
    (after the ``begin`` marker and the two size tokens) and runs through END and EOS."""
    import torch

    assert torch.equal(feats[: len(ids)], torch.from_numpy(position_features(ids.tolist())))
    first = int(torch.nonzero(mask)[0])
    assert ids[first - 3] == begin and first == len(ids) - n_target - 2


def test_thin_caption_keeps_the_name_and_drops_whole_parts():
    from perceiverar.data.batches import MAX_PARTS, thin_caption

    cap = np.frombuffer(b"blue heart; smileys & emotion; heart; google style", np.uint8).astype(np.int64)
    keep = np.ones(MAX_PARTS, bool)

    def thin(*dropped):
        k = keep.copy()
        k[list(dropped)] = False
        return thin_caption(cap, k).astype(np.uint8).tobytes().decode()

    assert thin() == "blue heart; smileys & emotion; heart; google style"
    assert thin(0) == thin()  # the first part (the name) is never dropped
    assert thin(1) == "blue heart; heart; google style" and thin(3) == "blue heart; smileys & emotion; heart"
    assert thin(1, 2, 3) == "blue heart" and thin_caption(cap[:10], np.zeros(1, bool)).tolist() == cap[:10].tolist()


def test_caption_part_dropout_trains_items_with_fewer_caption_parts(folders):
    """Whole items with thinned captions: each row is the item with some ';' parts of its caption removed (never
    the first), the loss mask starts at its target, and the features are those of the thinned sequence."""
    import torch

    img, _, cache = folders
    settings = D.TokenizerSettings(image_height=4, image_width=4, caption_template="{text}; {style} style")
    (src,), _ = D.prepare_sources([D.SourceSpec(img, 1.0, "image")], settings, cache, progress=False)
    captions = {src.file(i): src.item(i)[2 : 2 + int(src.index[i, 2])] for i in range(len(src))}
    plain = D.Mixture([src], context_len=256, n_latents=128, prompt_dropout=0.0, whole_items=True)
    thinned = D.Mixture([src], context_len=256, n_latents=128, prompt_dropout=0.0, whole_items=True,
                        caption_part_dropout=0.6)  # fmt: skip
    assert torch.equal(plain.batch(0, 0, 4)[0], D.Mixture([src], context_len=256, n_latents=128, prompt_dropout=0.0,
                                                           whole_items=True, caption_part_dropout=0.0).batch(0, 0, 4)[0])
    shorter = 0
    for step in range(8):
        tokens, feats, st = thinned.batch(step, 0, 4)
        for r in range(4):
            ids, cap = _unpadded_row(tokens, r)
            parts = cap.split("; ")
            wholes = [w for w in (bytes(c.tolist()).decode().split("; ") for c in captions.values())
                      if w[0] == parts[0] and all(p in w[1:] for p in parts[1:])]  # fmt: skip
            assert wholes, cap  # the name, then some of the item's own parts
            shorter += len(parts) < min(len(w) for w in wholes)
            _assert_row_layout(ids, feats[r], st["loss_mask"][r], IMAGE_BEGIN, 4 * 4 * 3)
    assert shorter >= 10  # of 32 rows, each caption has 3-4 parts after the name


def test_audio_items_below_the_minimum_length_are_skipped(tmp_path):
    """A file that decodes to a click (as a corrupt MIDI file can render) is no item: it could be the only val item."""
    import soundfile

    folder = tmp_path / "clips"
    folder.mkdir()
    sr = 22050
    t = np.arange(2 * sr) / sr
    lines = []
    for i, seconds in enumerate([2.0, 2.0, 0.02]):
        wave = 0.3 * np.sin(2 * np.pi * (220 * (i + 1)) * t[: int(seconds * sr)])
        soundfile.write(folder / f"c{i}.wav", wave.astype(np.float32), sr)
        lines.append({"file": f"c{i}.wav", "text": f"tone {i}"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    settings = D.TokenizerSettings(audio_codebook_size=8, audio_fit_files=3)
    (src,), codec = D.prepare_sources([D.parse_data_arg(str(folder))], settings, tmp_path / "c", progress=False,
                                      log=lambda m: None)  # fmt: skip
    assert src.manifest["items"] == ["c0.wav", "c1.wav"]
    (skip,) = src.manifest["skipped"]
    assert skip["file"] == "c2.wav" and "too short" in skip["reason"] and "0.25 s" in skip["reason"]


def test_uniform_windows_train_every_target_position_equally(folders):
    """Items longer than the latents: over many batches each target position is a loss target about equally
    often, every masked target lies in the batch's latents, and the crops are the items' own prefixes.
    (benchmarks/position_loss shows the old prefix policy's deficit at the bundled checkpoints' scale.)"""
    import torch

    from tokenizers_mm.vocab import PAD

    img, _, cache = folders
    src = D.prepare_source(D.SourceSpec(img, 1.0, "image"), SETTINGS, cache, progress=False)  # 8x8x3 = 192 targets
    N = 24
    counts = {}
    mix = D.Mixture([src], context_len=1024, n_latents=N, prompt_dropout=0.2, whole_items=True)
    for step in range(300):
        tokens, feats, st = mix.batch(step, 0, 4)
        mask, n = st["loss_mask"], st["n_latents"]
        T = tokens.shape[1] - 1
        targets = torch.nonzero(mask[:, 1:])  # (k, 2): row, input index predicting it
        assert (targets[:, 1] >= T - n).all(), "a target outside the latents"
        assert n <= N + 64
        for r in range(tokens.shape[0]):
            ids = tokens[r][tokens[r] != PAD]
            assert torch.equal(feats[r, : len(ids)], torch.from_numpy(position_features(ids.tolist())))
            pos = torch.nonzero(mask[r]).flatten()
            start = int(torch.nonzero(ids >= 5632)[4]) + 3  # first pixel
            assert pos.min() >= start and pos.numel() <= N
            for p in (pos - start).tolist():
                counts[p] = counts.get(p, 0) + 1
    first_row = np.mean([counts.get(p, 0) for p in range(24)])
    last_row = np.mean([counts.get(p, 0) for p in range(192 - 24, 192)])
    middle = np.mean([counts.get(p, 0) for p in range(84, 108)])
    assert 0.7 < first_row / middle < 1.4 and 0.7 < last_row / middle < 1.4, (first_row, middle, last_row)


def test_audio_options_reach_the_fitted_codebook(tmp_path):
    """perceiverar-train --audio-option: the codebook is fitted with those settings (two frames per token halve
    the codes of an item), under a cache key of its own; unknown names are a clear error."""
    import soundfile

    from perceiverar.train_args import audio_options

    folder = tmp_path / "clips"
    folder.mkdir()
    sr = 22050
    t = np.arange(2 * sr) / sr
    lines = []
    for i in range(3):
        soundfile.write(folder / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t)).astype(np.float32), sr)
        lines.append({"file": f"c{i}.wav", "text": f"tone {i}"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    opts = audio_options(["patch_frames=2", "n_mels=40", "iters=3"])
    assert opts == (("iters", 3), ("n_mels", 40), ("patch_frames", 2))
    out = {}
    for name, extra in (("plain", ()), ("two_frames", opts)):
        settings = D.TokenizerSettings(audio_codebook_size=8, audio_fit_files=3, audio_options=extra)
        out[name] = D.prepare_sources([D.parse_data_arg(str(folder))], settings, tmp_path / "c", progress=False,
                                      log=lambda m: None)  # fmt: skip
    (plain,), c1 = out["plain"]
    (two,), c2 = out["two_frames"]
    assert c1.dir != c2.dir
    assert (c1.tokenizer.config.patch_frames, c1.tokenizer.config.n_mels) == (1, 80)
    assert (c2.tokenizer.config.patch_frames, c2.tokenizer.config.n_mels) == (2, 40)
    a, b = plain.target_range(0)
    a2, b2 = two.target_range(0)
    assert b2 - a2 == -(-(b - a) // 2) == c2.tokenizer.n_tokens(2.0)
    with pytest.raises(ValueError, match="n_mel.*NAME=VALUE"):
        audio_options(["n_mel=128"])
    bad = D.TokenizerSettings(audio_codebook_size=8, audio_fit_files=3, audio_options=(("n_mels", "many"),))
    with pytest.raises((D.DatasetError, TypeError, ValueError)):
        D.prepare_sources([D.parse_data_arg(str(folder))], bad, tmp_path / "c", progress=False, log=lambda m: None)


def test_colour_augment_rows_keep_their_layout(folders):
    """Whole items with colour tags and hue rotation: each row's caption is its own with a colour word in front
    (or one colour word changed), the loss mask starts at its pixels and the features are the row's own."""
    from tokenizers_mm.vocab import PALETTE_BEGIN

    img, _, cache = folders
    spec = D.SourceSpec(img, 1.0, "image")
    pal = D.fit_source_palette([spec], SETTINGS, cache, colours=16, log=lambda m: None)
    settings = D.TokenizerSettings(image_height=8, image_width=8, image_mode="palette", image_palette=pal)
    src = D.prepare_source(spec, settings, cache, progress=False)
    names = {bytes(src.item(i)[2 : 2 + int(src.index[i, 2])].tolist()).decode().split(";")[0] for i in range(len(src))}
    mix = D.Mixture([src], context_len=256, n_latents=128, prompt_dropout=0.0, whole_items=True,
                    colour_augment=D.ColourAugment(np.array(pal, np.uint8), tag_prob=1.0, rotate_prob=0.5))  # fmt: skip
    changed = 0
    for step in range(6):
        tokens, feats, st = mix.batch(step, 0, 4)
        for r in range(4):
            ids, cap = _unpadded_row(tokens, r)
            name = cap.split(";")[0]
            if name not in names:
                words = name.split()
                assert any(" ".join(words[1:]) == n or (len(n.split()) == len(words) and sum(
                    a != b for a, b in zip(n.split(), words)) == 1) for n in names), name  # fmt: skip
                changed += 1
            _assert_row_layout(ids, feats[r], st["loss_mask"][r], PALETTE_BEGIN, 8 * 8)
    assert changed >= 8  # of 24 rows, most emoji have a clear dominant colour


def test_opening_weight_weights_the_first_targets_of_each_item(folders):
    """--opening-weight W:K: in whole-item and uniform-window batches, exactly the first K media targets of each
    row weigh W and every other target 1 (the same targets as without the weight); the loss is their weighted
    mean, so a wrong opening costs W times as much."""
    import torch

    from perceiverar.config import PerceiverARConfig
    from perceiverar.model import PerceiverAR

    img, _, cache = folders
    src = D.prepare_source(D.SourceSpec(img, 1.0, "image"), SETTINGS, cache, progress=False)  # 192 targets
    W, K = 5.0, 10
    for N in (256, 24):  # whole items, then uniform windows
        plain = D.Mixture([src], context_len=1024, n_latents=N, whole_items=True)
        weighted = D.Mixture([src], context_len=1024, n_latents=N, whole_items=True, opening_weight=W, opening_tokens=K)
        seen_opening = 0
        for step in range(40):
            t0, _, s0 = plain.batch(step, 0, 3)
            t1, _, s1 = weighted.batch(step, 0, 3)
            m0, m1 = s0["loss_mask"], s1["loss_mask"]
            assert torch.equal(t0, t1) and m0.dtype == torch.bool and m1.dtype == torch.float32
            assert torch.equal(m1 > 0, m0)  # the same targets
            for r in range(3):
                start = int(torch.nonzero(t1[r] >= 5632)[4]) + 3  # first pixel
                opening = torch.zeros_like(m0[r])
                opening[start : start + K] = True
                assert (m1[r][m0[r] & opening] == W).all() and (m1[r][m0[r] & ~opening] == 1).all()
                seen_opening += int((m0[r] & opening).sum())
        assert seen_opening > 0
    # the loss: the weighted mean of the per-target NLL
    model = PerceiverAR(PerceiverARConfig(width=32, n_heads=2, head_dim=16, n_layers=1, n_latents=256,
                                          context_len=1024)).eval()  # fmt: skip
    torch.manual_seed(0)
    with torch.no_grad():  # the zero-initialised head gives every target the same NLL: perturb it
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    whole = D.Mixture([src], context_len=1024, n_latents=256, whole_items=True, opening_weight=W, opening_tokens=K)
    tokens, feats, st = whole.batch(0, 0, 2)
    w = st["loss_mask"]
    with torch.no_grad():
        nll, _ = model.token_nll(tokens, feats, n_latents=tokens.shape[1] - 1)
        loss = model.loss(tokens, feats, loss_mask=w, n_latents=tokens.shape[1] - 1)
    ww = w[:, 1:]
    assert torch.allclose(loss, (nll * ww).sum() / ww.sum(), rtol=1e-5)
    assert not torch.allclose(loss, nll[ww > 0].mean(), rtol=1e-5)


def make_triad_folder(folder: Path) -> Path:
    """Six 3-second clips of sustained triads (C, G, Am, ...) with captions naming them."""
    import soundfile

    folder.mkdir()
    sr, lines = 22050, []
    t = np.arange(3 * sr) / sr
    for i, (root, minor) in enumerate([(60, False), (55, False), (57, True), (62, True), (65, False), (64, True)]):
        y = sum(np.sin(2 * np.pi * 440 * 2 ** ((m - 69) / 12) * t) for m in (root, root + 3 + (not minor), root + 7))
        soundfile.write(folder / f"c{i}.wav", (0.1 * y).astype(np.float32), sr)
        lines.append({"file": f"c{i}.wav", "text": f"triad {i}"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_opening_clips_cut_chords_items_to_the_clip_a_user_asks_for(tmp_path):
    """opening_clips: a batch of each item's first K codes (with their chord labels) as a whole clip whose header
    says K, end markers after; the labels weighted by chord_weight; without it, the items as they are."""
    import torch

    from perceiverar.data.batches import opening_clip
    from tokenizers_mm.vocab import AUDIO_END, CHORD_BLOCK, CHORD_OFFSET, EOS, PAD, split_sequence

    clips = make_triad_folder(tmp_path / "clips")
    settings = D.TokenizerSettings(audio_codebook_size=8, audio_fit_files=6, audio_mode="chords")
    (src,), _ = D.prepare_sources([D.parse_data_arg(str(clips))], settings, tmp_path / "c", progress=False,
                                  log=lambda m: None)  # fmt: skip
    K = 30  # two blocks: 30 codes, 2 labels
    mix = D.Mixture([src], context_len=512, n_latents=64, prompt_dropout=0.3, whole_items=True,
                    opening_clips=(1.0, K), chord_weight=3.0)  # fmt: skip
    for step in range(6):
        tokens, feats, st = mix.batch(step, 0, 3)
        for r in range(3):
            ids = tokens[r][tokens[r] != PAD].tolist()
            p = split_sequence(ids)
            assert p.audio_mode == "chords" and p.n_audio_tokens == K and p.complete and len(p.target) == K + 2
            assert ids[-2:] == [AUDIO_END, EOS]
            i = ids.index(p.target[0])
            assert torch.equal(feats[r, : len(ids)], torch.from_numpy(position_features(ids)))
            w = st["loss_mask"][r]
            assert w[i] == 3.0 and w[i + CHORD_BLOCK + 1] == 3.0 and w[i + 1] == 1.0 and w[i - 1] == 0
            assert CHORD_OFFSET <= ids[i] < CHORD_OFFSET + 25
    # the cut keeps the item's own first ids; a short item is left alone
    full = src.item(0)
    a, _ = src.target_range(0)
    cut, start = opening_clip(full, a, K)
    assert start == a and np.array_equal(cut[a : a + K + 2], full[a : a + K + 2]) and len(cut) == a + K + 2 + 2
    same, _ = opening_clip(full, a, 10_000)
    assert same is full


def test_mirror_flips_whole_image_rows_and_keeps_the_layout(folders):
    """--mirror 1: every captioned whole-item row is its item's picture flipped left-right (the same caption,
    header and end markers, the features of the flipped sequence); at 0 the batches are the plain ones."""
    import torch

    from perceiverar.data.mirror import mirror_image_section

    img, _, cache = folders
    lines = [json.loads(x) for x in (img / "captions.jsonl").read_text().splitlines()]
    for k, rec in enumerate(lines[::2]):  # half the (keycap) captions renamed to ones a flip keeps true
        rec["text"] = f"smiling face {k}; smileys"
    (img / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    settings = D.TokenizerSettings(image_height=4, image_width=4, caption_template="{text}; {style} style")
    (src,), _ = D.prepare_sources([D.SourceSpec(img, 1.0, "image")], settings, cache, progress=False)
    items = {bytes(src.item(i)[2 : 2 + int(src.index[i, 2])].tolist()).decode(): src.item(i) for i in range(len(src))}
    plain = D.Mixture([src], context_len=256, n_latents=128, prompt_dropout=0.0, whole_items=True)
    off = D.Mixture([src], context_len=256, n_latents=128, prompt_dropout=0.0, whole_items=True, mirror=D.Mirror(0.0))
    flipped = D.Mixture([src], context_len=256, n_latents=128, prompt_dropout=0.0, whole_items=True,
                        mirror=D.Mirror(1.0))  # fmt: skip
    changed = 0
    for step in range(8):
        assert torch.equal(plain.batch(step, 0, 4)[0], off.batch(step, 0, 4)[0])
        tokens, feats, st = flipped.batch(step, 0, 4)
        for r in range(4):
            ids, cap = _unpadded_row(tokens, r)
            own = items[cap]
            if "keycap" in cap:  # a keycap's digit would read backwards: never flipped
                assert ids.tolist() == own.tolist()
            else:
                assert ids.tolist() == mirror_image_section(own).tolist()
                changed += ids.tolist() != own.tolist()
            _assert_row_layout(ids, feats[r], st["loss_mask"][r], IMAGE_BEGIN, 4 * 4 * 3)
    assert changed >= 6  # of ~16 renamed rows; a 4x4 keycap can be its own mirror


def test_balance_draws_groups_by_size(folders):
    """--balance FIELD:POWER: an item of a group of n train items is drawn with probability ~ n ** -POWER; the
    group comes from captions.jsonl; items without the field form a group of their own."""
    img, _, cache = folders
    lines = [json.loads(x) for x in (img / "captions.jsonl").read_text().splitlines()][:N_EMOJI]
    for k, rec in enumerate(lines):  # caption "big" on 6 items, "small" on 2; one of the big ones has no group
        big = k < 6
        rec["text"] = "big" if big else "small"
        if big and k != 0:
            rec["group"] = "big"
        elif not big:
            rec["group"] = "small"
    # a line that is not JSON is skipped by the preparation, and by --balance too
    (img / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + "{not json\n")
    src = D.prepare_source(D.parse_data_arg(str(img)), SETTINGS, cache, progress=False)
    groups = [item_groups(src, "group")[int(i)] for i in src.train_items]
    n = {g: groups.count(g) for g in set(groups)}
    assert n.get("small", 0) >= 1 and n.get("big", 0) > n.get("small", 0), n  # the split left both groups in train
    p, shares = D.balanced_probs(src, "group", 1.0)
    assert p.sum() == pytest.approx(1.0) and set(shares) == {"(none)" if g is None else g for g in n}
    for share in shares.values():  # power 1: every group the same share
        assert share == pytest.approx(1 / len(shares))
    p0, _ = D.balanced_probs(src, "group", 0.0)
    assert np.allclose(p0, 1 / len(src.train_items))  # power 0: uniform
    # the mixture draws by those probabilities: "small" captions in about 1/len(shares) of the rows, not 2/8
    mix = D.Mixture([src], 256, 512, prompt_dropout=0.0, seed=1, whole_items=True, balance=("group", 1.0))
    rows = [r for step in range(150) for r in mix.batch(step, 0, 8)[0].tolist()]
    small = sum(r[2:7] == list(b"small") for r in rows) / len(rows)
    assert abs(small - shares["small"]) < 0.06, (small, shares)
    uniform = D.Mixture([src], 256, 512, prompt_dropout=0.0, seed=1, whole_items=True)
    rows = [r for step in range(150) for r in uniform.batch(step, 0, 8)[0].tolist()]
    assert abs(sum(r[2:7] == list(b"small") for r in rows) / len(rows) - n["small"] / len(groups)) < 0.06
    for bad in ("", ":0.5", "category:x", "category:2"):
        with pytest.raises(ValueError, match="--balance"):
            D.parse_balance(bad)
    assert D.parse_balance("category") == ("category", 0.5)


def test_longest_caption_counts_utf8_bytes_under_the_template(tmp_path):
    from PIL import Image

    from perceiverar.data import longest_caption

    for name in ("a.png", "b.png"):
        Image.new("RGB", (4, 4), "red").save(tmp_path / name)
    rows = [{"file": "a.png", "text": "red", "style": "a long style"},
            {"file": "b.png", "text": "café au lait", "style": "x"}]
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    assert longest_caption(tmp_path, "image") == len("café au lait".encode())  # 13: the é is two bytes
    assert longest_caption(tmp_path, "image", "{text}; {style} style") == len("red; a long style style")  # 23 > 22
    assert longest_caption(tmp_path / "nothing", "image") == 0
