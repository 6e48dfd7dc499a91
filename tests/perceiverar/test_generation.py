"""Generation: cached logits equal full forward passes over the same crops, sampling, constraints, errors."""

from __future__ import annotations

import threading

import pytest
import torch

from perceiverar import generate
from perceiverar.constraints import ModalityConstraint
from perceiverar.generation import append, new_stream, next_logits
from perceiverar.prompting import unconditional_prompt
from perceiverar.sampling import guide, sample
from perceiverar.window import Schedule, Window, make_schedule
from tokenizers_mm.vocab import (
    AUDIO_END, EOS, IMAGE_BEGIN, IMAGE_END, NUM_OFFSET, PAD, SEP, TEXT_END, build_sequence, position_features,
)  # fmt: skip
from tokenizers_mm.ids import FEATURE_SIZES, WORD_SLOT

pytestmark = pytest.mark.usefixtures("one_thread")


def image_prompt(n_tokens: int, side: int = 16) -> list[int]:
    """A partial image sequence of n_tokens ids: the header, then random pixels (so features are non-zero)."""
    ids = build_sequence("a red square", "image", height=side, width=side, complete=False)
    g = torch.Generator().manual_seed(1)
    return ids + torch.randint(256, 512, (n_tokens - len(ids),), generator=g).tolist()


# ---------------------------------------------------------------------------------------- the schedule


def test_schedule_first_window_and_slides(debug_model):
    sch = Schedule(context_len=10, n_latents=4, stride=2)
    w = sch.window(None, 3)  # a short prompt: everything fits
    assert w == Window(0, 0)
    w = sch.window(None, 25)  # as if just slid: context = the last 10 - 2 + 1, latents = the last 4 - 2 + 1
    assert w == Window(16, 22)
    assert sch.window(w, 26) == w  # 4 latents, 10 positions: still fits
    assert sch.window(w, 27) == Window(18, 24)  # p=26: 5 latents > 4 -> a += 2; 11 positions > 10 -> s += 2
    w = Window(0, 6)
    assert sch.window(w, 10) == w  # p=9: 4 latents, 10 positions: fits
    assert sch.window(w, 11) == Window(2, 8)  # both slide by the stride
    with pytest.raises(ValueError):
        make_schedule(debug_model(), n_latents=1000)
    with pytest.raises(ValueError):
        make_schedule(debug_model(), n_latents=8, stride=9)


# ------------------------------------------------------------------------------ exactness of the cache


CASES = [
    # (config overrides, prompt length, steps, n_latents, stride)
    pytest.param({}, 40, 70, None, None, id="short-prompt"),  # L=256, N=32: a slides 4 times
    pytest.param({}, 300, 60, None, None, id="prompt-longer-than-context"),  # s and a slide together
    pytest.param(dict(context_len=48, n_latents=16), 30, 80, None, 5, id="small-context-odd-stride"),
    pytest.param({}, 100, 40, 8, None, id="fewer-latents"),
    # The short convolution reads positions before a chunk but never before the window: slides of s must
    # restart it at the new window's start, as a training crop does.
    pytest.param(dict(conv_kernel=4), 300, 60, None, None, id="conv-context-slides"),
    pytest.param(dict(conv_kernel=3, context_len=48, n_latents=16), 30, 80, None, 5, id="conv-small-context"),
    # Length-scaled queries: each query's factor follows its own key count, in prefill chunks, decode steps and
    # after slides of the context window alike.
    pytest.param(dict(conv_kernel=4, query_len_scale=16), 300, 60, None, None, id="len-scaled-queries-slides"),
    pytest.param(dict(query_len_scale=8, context_len=48, n_latents=16), 30, 80, None, 5, id="len-scaled-small-context"),
    # Pinned latents: the window's first positions join the stack, their number growing with a until it reaches P
    # (the first windows have fewer before a), their rotary positions moving with a on every slide.
    pytest.param(dict(pinned_latents=6, conv_kernel=4), 40, 70, None, None, id="pinned-short-prompt"),
    pytest.param(dict(pinned_latents=6, conv_kernel=4, query_len_scale=16), 300, 60, None, None, id="pinned-slides"),
    pytest.param(dict(pinned_latents=12, context_len=48, n_latents=16), 20, 90, None, 5,
                 id="pinned-grows-small-context"),
    pytest.param(dict(pinned_latents=40), 100, 40, 8, None, id="pinned-more-than-latents"),
]


@pytest.mark.parametrize("overrides,P,steps,n_latents,stride", CASES)
def test_cached_logits_equal_full_forward(debug_model, overrides, P, steps, n_latents, stride):
    model = debug_model(**overrides)
    prompt = image_prompt(P)
    sch = make_schedule(model, n_latents, stride)
    g = torch.Generator().manual_seed(2)
    starts, firsts = set(), set()
    with torch.inference_mode():
        cached = new_stream(model, prompt, 2, steps, schedule=sch, use_cache=True)
        ref = new_stream(model, prompt, 2, steps, schedule=sch, use_cache=False)
        for _ in range(steps):
            got, want = next_logits(model, cached, sch), next_logits(model, ref, sch)
            s, a = cached.window.start, cached.window.first_latent
            # The reference is by definition the full forward over the crop, last row.
            p = cached.length
            full = model(cached.tokens[:, s:p], cached.features[:, s:p], n_latents=p - a)[:, -1]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got, full, atol=1e-4, rtol=1e-4)
            starts.add(s)
            firsts.add(a)
            ids = torch.randint(256, 512, (2,), generator=g)  # teacher-forced: both paths see the same ids
            append(cached, ids)
            append(ref, ids)
    assert len(firsts) >= 3, "the latent window should have slid several times"
    if P + steps > model.cfg.context_len:
        assert len(starts) >= 2, "the context window should have slid"
    # Features were computed on the whole sequence, never on a crop.
    torch.testing.assert_close(cached.features[0, : cached.length], torch.from_numpy(position_features(cached.tokens[0, : cached.length].tolist())))


@pytest.mark.parametrize("P", [20, 300])
@pytest.mark.parametrize("conv_kernel,pinned", [(0, 0), (4, 0), (4, 8)])
def test_greedy_identical_with_and_without_cache(debug_model, P, conv_kernel, pinned):
    model = debug_model(conv_kernel=conv_kernel, pinned_latents=pinned)
    prompt = image_prompt(P)
    kw = dict(top_k=1, num_samples=2, overflow="truncate")
    with pytest.warns(UserWarning) if P + 60 > 256 else _nullcontext():
        a = generate(model, prompt, 60, use_cache=True, **kw)
    with pytest.warns(UserWarning) if P + 60 > 256 else _nullcontext():
        b = generate(model, prompt, 60, use_cache=False, **kw)
    assert a.shape == (2, 60)
    assert torch.equal(a, b)


def test_guidance_cached_equals_uncached_and_first_step(debug_model):
    model = debug_model()
    prompt = build_sequence("a big blue circle on grey", "image", height=8, width=8, complete=False)
    uncond = build_sequence("", "image", height=8, width=8, complete=False)
    assert unconditional_prompt(prompt) == uncond
    kw = dict(top_k=1, cfg_scale=3.0, uncond_prompt_ids=uncond)
    a = generate(model, prompt, 70, **kw)
    b = generate(model, prompt, 70, use_cache=False, **kw)
    assert torch.equal(a, b)  # cond and uncond groups keep their own windows over 2+ slides
    with torch.inference_mode():
        pf = torch.from_numpy(position_features(prompt))[None]
        uf = torch.from_numpy(position_features(uncond))[None]
        first = guide(model(torch.tensor([prompt]), pf)[:, -1], model(torch.tensor([uncond]), uf)[:, -1], 3.0)
    assert a[0, 0] == first.argmax(-1)[0]
    c = generate(model, prompt, 5, top_k=1, cfg_scale=1.0)
    d = generate(model, prompt, 5, top_k=1)
    assert torch.equal(c, d)


# -------------------------------------------------------------------------------------------- sampling


def test_sample_top_k_top_p_temperature():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    ids = sample(logits, top_k=2, generator=g)
    assert set(ids.tolist()) == {2, 3}
    # top_p=0.5: p(3) = 0.64 >= 0.5, so only id 3 survives
    assert set(sample(logits, top_p=0.5, generator=g).tolist()) == {3}
    assert set(sample(logits, top_p=0.85, generator=g).tolist()) == {2, 3}  # 0.64 + 0.24 = 0.88 covers 0.85
    assert set(sample(logits, top_p=0.9, generator=g).tolist()) == {1, 2, 3}
    assert torch.equal(sample(logits, temperature=0), torch.full((2000,), 3))
    hot = sample(logits, temperature=100.0, generator=g)
    assert len(set(hot.tolist())) == 4


def test_seed_reproducible_and_samples_differ(debug_model):
    model = debug_model()
    prompt = image_prompt(20)
    a = generate(model, prompt, 12, seed=7, num_samples=3, temperature=5.0)
    b = generate(model, prompt, 12, seed=7, num_samples=3, temperature=5.0)
    c = generate(model, prompt, 12, seed=8, num_samples=3, temperature=5.0)
    assert a.shape == (3, 12) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])


# ------------------------------------------------------------------------------- constrained decoding


def test_image_constraint_exact_pixels_then_end(debug_model):
    model = debug_model()
    prompt = build_sequence("cat", "image", height=4, width=5, complete=False)
    con = ModalityConstraint("image", height=4, width=5)
    out = generate(model, prompt, 200, constraint=con, seed=0, num_samples=2)
    assert out.shape == (2, 4 * 5 * 3 + 2)  # stops once every row is finished
    assert ((out[:, :-2] >= 256) & (out[:, :-2] < 512)).all()
    assert (out[:, -2] == IMAGE_END).all() and (out[:, -1] == EOS).all()


def test_image_constraint_forces_missing_header_and_counts_partial_content(debug_model):
    model = debug_model()
    prompt = build_sequence("cat", "image", height=2, width=2, complete=False)[:-3]  # ends with SEP
    assert prompt[-1] == SEP
    out = generate(model, prompt, 50, constraint=ModalityConstraint("image", height=2, width=2), seed=0)[0].tolist()
    assert out[:3] == [IMAGE_BEGIN, NUM_OFFSET + 2, NUM_OFFSET + 2] and len(out) == 3 + 12 + 2
    partial = build_sequence("cat", "image", [300] * 5, height=2, width=2, complete=False)
    out = generate(model, partial, 50, constraint=ModalityConstraint("image", height=2, width=2), seed=0)[0]
    assert len(out) == 7 + 2
    with pytest.raises(ValueError, match="header"):
        generate(model, partial, 50, constraint=ModalityConstraint("image", height=3, width=2))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, prompt, 10, constraint=ModalityConstraint("image", height=2, width=2))


def test_audio_and_text_constraints(debug_model):
    model = debug_model()
    prompt = build_sequence("drums", "audio", n_audio_tokens=7, complete=False)
    out = generate(model, prompt, 20, constraint=ModalityConstraint("audio", n_audio_tokens=7), seed=0)[0]
    assert len(out) == 9 and ((out[:7] >= 512) & (out[:7] < 4608)).all() and out[7] == AUDIO_END and out[8] == EOS

    text = build_sequence("Once upon", "text", complete=False)
    out = generate(model, text, 40, constraint=ModalityConstraint("text", max_bytes=6), seed=0, num_samples=3, temperature=3.0)
    for row in out.tolist():
        end = row.index(TEXT_END)
        assert end <= 6 and all(0 <= t < 256 for t in row[:end]) and row[end + 1] == EOS
        assert all(t == PAD for t in row[end + 2 :])
    # TEXT_END may come early (then EOS is forced); without max_bytes, max_new_tokens bounds the bytes.
    con = ModalityConstraint("text")
    con.begin(text, 2, max_new_tokens=10)
    assert con.tokens_needed() == 10
    con.update(torch.tensor([TEXT_END, 65]))
    allowed = con.allowed(model.cfg.vocab_size)
    assert allowed[0].nonzero().flatten().tolist() == [EOS]
    assert allowed[1, :256].all() and allowed[1, TEXT_END] and allowed[1].sum() == 257
    with pytest.raises(ValueError, match="open text section"):
        ModalityConstraint("text").begin(build_sequence("hi", "text"), 1, 10)


def test_chords_audio_constraint_puts_a_label_before_every_block(debug_model):
    """audio_mode="chords": a chord label (and nothing else) at every CHORD_BLOCK + 1'th content slot, codes of
    the given range between, also when the prompt already holds part of the section."""
    from tokenizers_mm.vocab import CHORD_BLOCK, CHORD_OFFSET, N_CHORDS

    model = debug_model()
    n = 2 * CHORD_BLOCK + 5  # three blocks, the last partial
    prompt = build_sequence("drums", "audio", n_audio_tokens=n, complete=False, audio_mode="chords")
    con = ModalityConstraint("audio", n_audio_tokens=n, content_range=(512, 512 + 16), audio_mode="chords")
    out = generate(model, prompt, 200, constraint=con, seed=0, num_samples=2, temperature=3.0)
    assert out.shape == (2, n + 3 + 2)
    for row in out.tolist():
        content, end = row[: n + 3], row[n + 3 :]
        slots = list(range(0, n + 3, CHORD_BLOCK + 1))
        assert slots == [0, CHORD_BLOCK + 1, 2 * CHORD_BLOCK + 2]
        assert all(CHORD_OFFSET <= content[i] < CHORD_OFFSET + N_CHORDS for i in slots)
        assert all(512 <= t < 528 for i, t in enumerate(content) if i not in slots)
        assert end == [AUDIO_END, EOS]
    # a prompt that already holds the first label and 3 codes: the next label still falls on slot 23
    part = prompt + out[0, :4].tolist()
    con = ModalityConstraint("audio", n_audio_tokens=n, audio_mode="chords")
    con.begin(part, 1)
    assert con.tokens_needed() == n + 3 - 4 + 2
    assert con.plan()[CHORD_BLOCK + 1 - 4] == CHORD_OFFSET and con.plan()[0] == 512
    ids = []
    for _ in range(CHORD_BLOCK + 2 - 4):  # content slots 4 .. 23
        allowed = con.allowed(model.cfg.vocab_size)[0]
        ids.append(bool(allowed[CHORD_OFFSET]))
        con.update(torch.tensor([int(allowed.nonzero()[0])]))
    assert not any(ids[:-1]) and ids[-1]
    with pytest.raises(ValueError, match="non-audio id"):
        ModalityConstraint("audio", n_audio_tokens=n, audio_mode="chords").begin(prompt + [512], 1)


def test_chord_labels_narrow_the_labels_a_chords_section_may_take(debug_model):
    """chord_labels (a key lock): at temperature 3 a random model draws labels from the whole 25 without it and
    only the given ones with it; codes are untouched. Refused for a section without chord labels."""
    from tokenizers_mm.vocab import CHORD_BLOCK, CHORD_OFFSET

    model = debug_model()
    n = 8 * CHORD_BLOCK  # eight blocks
    prompt = build_sequence("drums", "audio", n_audio_tokens=n, complete=False, audio_mode="chords")
    slots = list(range(0, n + 8, CHORD_BLOCK + 1))
    keep = [0, 5, 7, 24]
    drawn = {}
    for lock in (None, keep):
        con = ModalityConstraint("audio", n_audio_tokens=n, content_range=(512, 528), audio_mode="chords", chord_labels=lock)
        out = generate(model, prompt, n + 10, constraint=con, seed=0, num_samples=4, temperature=3.0)
        drawn[lock is None] = {out[r, i].item() - CHORD_OFFSET for r in range(4) for i in slots}
        assert all(512 <= t < 528 for r in out.tolist() for i, t in enumerate(r[: n + 8]) if i not in slots)
    assert drawn[False] <= set(keep) and len(drawn[False]) > 1
    assert drawn[True] - set(keep)  # unlocked, the same draws leave the set
    # first_chord: the section's first label is that one; a prompt that already opened the section is not touched
    con = ModalityConstraint("audio", n_audio_tokens=n, content_range=(512, 528), audio_mode="chords", chord_labels=keep,
                             first_chord=5)  # fmt: skip
    out = generate(model, prompt, n + 10, constraint=con, seed=1, num_samples=4, temperature=3.0)
    assert out[:, 0].tolist() == [CHORD_OFFSET + 5] * 4
    assert {out[r, i].item() - CHORD_OFFSET for r in range(4) for i in slots[1:]} <= set(keep)
    con.begin(prompt + [CHORD_OFFSET + 7, 512], 1)
    assert con.allowed(model.cfg.vocab_size)[0, 512] and not con.allowed(model.cfg.vocab_size)[0, CHORD_OFFSET:].any()
    with pytest.raises(ValueError, match="first_chord"):
        ModalityConstraint("audio", n_audio_tokens=n, first_chord=5)
    with pytest.raises(ValueError, match="chords layout"):
        ModalityConstraint("audio", n_audio_tokens=n, chord_labels=keep)
    with pytest.raises(ValueError, match="subset"):
        ModalityConstraint("audio", n_audio_tokens=n, audio_mode="chords", chord_labels=[25])


# ---------------------------------------------------------------------------------- streaming, cancel


def test_on_token_streams_and_stop_event_cancels(debug_model):
    model = debug_model()
    seen = []
    stop = threading.Event()

    def on_token(step, ids):
        seen.append((step, ids.clone()))
        if step == 2:
            stop.set()

    out = generate(model, image_prompt(20), 50, on_token=on_token, stop_event=stop, seed=0, num_samples=2)
    assert out.shape == (2, 3)
    assert [s for s, _ in seen] == [0, 1, 2]
    assert torch.equal(torch.stack([i for _, i in seen], 1), out)


# ---------------------------------------------------------------------------------------------- errors


def test_clear_errors(debug_model):
    model = debug_model()
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, [], 5)
    with pytest.raises(ValueError, match="id 99999 at position 1"):
        generate(model, [5633, 99999], 5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [5633], 0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [5633], 10**9, overflow="truncate")
    with pytest.raises(ValueError, match="n_latents"):
        generate(model, [5633], 5, n_latents=10_000)
    with pytest.raises(ValueError, match="overflow"):
        generate(model, [5633], 5, overflow="drop")
    with pytest.raises(ValueError, match="top_p"):
        generate(model, [5633], 5, top_p=1.5)
    long = build_sequence("x" * 200, "image", height=4, width=4, complete=False)  # 207 tokens
    with pytest.raises(ValueError, match=r"207 tokens \+ max_new_tokens=100 = 307 tokens exceeds the model's context of 256"):
        generate(model, long, 100)


def test_truncate_drops_oldest_condition_tokens(debug_model):
    model = debug_model()
    long = build_sequence(b"A" * 100 + b"B" * 100, "image", height=4, width=4, complete=False)  # 207 tokens
    with pytest.warns(UserWarning, match="dropped the 51 oldest condition tokens"):
        out = generate(model, long, 100, overflow="truncate", top_k=1)
    assert out.shape == (1, 100)
    # The kept prompt is the layout with its newest 149 condition bytes: compare with generating from it.
    kept = build_sequence(b"A" * 49 + b"B" * 100, "image", height=4, width=4, complete=False)
    assert torch.equal(out, generate(model, kept, 100, top_k=1))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_conv_exact_across_context_chunks(debug_model, monkeypatch):
    """fill_context embeds the window in chunks: each chunk's convolution must read the tokens before it."""
    import perceiverar.generation as gen

    monkeypatch.setattr(gen, "CONTEXT_CHUNK", 7)
    model = debug_model(conv_kernel=4)
    prompt = image_prompt(120)
    with torch.inference_mode():
        a = generate(model, prompt, 40, top_k=1, use_cache=True)
        b = generate(model, prompt, 40, top_k=1, use_cache=False)
    assert torch.equal(a, b)


def test_palette_image_constraint_one_token_per_pixel_within_the_palette(debug_model):
    from tokenizers_mm.vocab import PALETTE_BEGIN

    model = debug_model()
    prompt = build_sequence("a red square", "image", height=4, width=3, complete=False, image_mode="palette")
    assert prompt[-3] == PALETTE_BEGIN
    c = ModalityConstraint("image", height=4, width=3, image_mode="palette", content_range=(256, 256 + 10))
    out = generate(model, prompt, 12 + 2, constraint=c, seed=0, num_samples=2)[0].tolist()
    assert all(256 <= t < 266 for t in out[:12]) and out[12:] == [IMAGE_END, EOS]
    with pytest.raises(ValueError, match="header"):  # a sub-pixel request does not continue a palette header
        ModalityConstraint("image", height=5, width=3, image_mode="palette").begin(prompt, 1)


# ------------------------------------------------------------------- the static decode step, on the device


def test_sample_draws_what_torch_multinomial_draws():
    """sample() takes multinomial's one-sample path itself (exponential noise, argmax: no host synchronisation);
    with the same generator it must draw exactly the ids torch.multinomial draws."""
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(3)) * 3
    for kw in (dict(), dict(temperature=0.7, top_k=20), dict(top_p=0.9)):
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        ours = torch.stack([sample(logits, generator=g1, **kw) for _ in range(40)])
        ref_logits = logits / kw.get("temperature", 1.0)
        if "top_k" in kw:
            kth = torch.topk(ref_logits, kw["top_k"]).values[:, -1:]
            ref_logits = ref_logits.masked_fill(ref_logits < kth, float("-inf"))
        if "top_p" in kw:
            srt, order = ref_logits.sort(-1, descending=True)
            p = srt.softmax(-1)
            drop = torch.zeros_like(p, dtype=torch.bool).scatter(-1, order, p.cumsum(-1) - p > kw["top_p"])
            ref_logits = ref_logits.masked_fill(drop, float("-inf"))
        ref = torch.stack([torch.multinomial(ref_logits.softmax(-1), 1, generator=g2)[:, 0] for _ in range(40)])
        assert torch.equal(ours, ref), kw


@pytest.mark.parametrize(
    "modality,prompt,kw",
    [
        ("image", build_sequence("cat", "image", height=3, width=4, complete=False), dict(height=3, width=4)),
        ("image", build_sequence("cat", "image", height=3, width=4, complete=False)[:-3], dict(height=3, width=4)),
        ("image", build_sequence("cat", "image", height=4, width=3, complete=False, image_mode="palette"),
         dict(height=4, width=3, image_mode="palette", content_range=(256, 266))),
        ("audio", build_sequence("drums", "audio", n_audio_tokens=9, complete=False), dict(n_audio_tokens=9)),
        ("text", build_sequence("Once upon", "text", complete=False), dict(max_bytes=12)),
    ],
)  # fmt: skip
def test_planned_features_are_those_of_the_generated_ids(debug_model, modality, prompt, kw):
    """With a constraint the features of every new id are computed up front from the constraint's plan; they must
    equal the features of the ids actually generated (text rows here stop early at different steps). Text is
    planned only for a model without the word slot (a checkpoint trained before it: it reads the first three)."""
    model = debug_model(conv_kernel=3, **({"feature_sizes": FEATURE_SIZES[:WORD_SLOT]} if modality == "text" else {}))
    con = ModalityConstraint(modality, **kw)
    con.begin(prompt, 3, 60)
    sch = make_schedule(model)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        st = new_stream(model, prompt, 3, 60, schedule=sch, use_cache=True, plan=con.plan())
        assert st.trackers is None
        for _ in range(con.tokens_needed()):
            ids = sample(con.apply(next_logits(model, st, sch)), temperature=8.0, generator=g)
            con.update(ids)
            append(st, ids)
    assert con.done
    for r in range(3):
        ids = st.tokens[r, : st.length].tolist()
        want = torch.from_numpy(position_features(ids))
        if modality == "text":  # the word and paragraph slots are what a plan cannot know (nor such a model read)
            want[:, WORD_SLOT:] = st.features[r, : st.length, WORD_SLOT:]
        torch.testing.assert_close(st.features[r, : st.length], want)
    if modality == "text":
        assert len({row.index(TEXT_END) for row in st.tokens[:, len(prompt) :].tolist()}) > 1, "rows should stop apart"


def test_generated_text_gets_its_word_features(debug_model):
    """A model with the word slot generates text with per-token trackers, not a plan: greedy decoding equals a
    reference that runs full forward passes with every byte's features from ``position_features`` (word slot
    included). The reference is sensitive to that slot: zeroing it on the generated bytes changes the logits."""
    model = debug_model(conv_kernel=3, bias_std=0.5)
    assert len(model.cfg.feature_sizes) > WORD_SLOT
    prompt = build_sequence("Once upon a ti", "text", complete=False)
    ids, ref = list(prompt), []
    with torch.inference_mode():
        for _ in range(10):
            lg = model(torch.tensor([ids]), torch.from_numpy(position_features(ids))[None])[0, -1]
            masked = torch.full_like(lg, float("-inf"))
            masked[:256], masked[TEXT_END] = lg[:256], lg[TEXT_END]
            ref.append(int(masked.argmax()))
            ids.append(ref[-1])
            if ref[-1] == TEXT_END:
                break
        feats = torch.from_numpy(position_features(ids))[None]
        assert feats[0, len(prompt) :, WORD_SLOT].any(), "the greedy bytes should hold a word byte"
        planned = feats.clone()
        planned[0, len(prompt) :, WORD_SLOT] = 0  # what a plan would give them
        tokens = torch.tensor([ids])
        assert not torch.allclose(model(tokens, feats)[0, -1], model(tokens, planned)[0, -1])
    out = generate(model, prompt, 12, temperature=0, constraint=ModalityConstraint("text", max_bytes=10))
    assert out[0, : len(ref)].tolist() == ref



@pytest.mark.slow  # torch.compile of the step: 1 to 15 min on a busy 2-core CPU
def test_compiled_step_exact_across_slides(debug_model):
    """The compiled step (torch.compile of decode_one_token) decodes greedily exactly as the uncached full forward
    passes, across slides of the latents and of the context, with the short convolution and with guidance."""
    from perceiverar.decode_step import _COMPILED

    model = debug_model(conv_kernel=4, context_len=64, n_latents=16, query_len_scale=16, pinned_latents=4)
    prompt = image_prompt(50, side=8)
    kw = dict(top_k=1, num_samples=2, overflow="truncate")
    with pytest.warns(UserWarning, match="dropped"):
        a = generate(model, prompt, 40, compile=True, **kw)
    assert not _COMPILED[None].failed, "the step fell back to eager"
    with pytest.warns(UserWarning, match="dropped"):
        b = generate(model, prompt, 40, use_cache=False, **kw)
    assert torch.equal(a, b)
    guided = build_sequence("a big blue circle", "image", height=4, width=4, complete=False)
    kw = dict(top_k=1, cfg_scale=2.5, constraint=None)
    assert torch.equal(generate(model, guided, 38, compile=True, **kw), generate(model, guided, 38, use_cache=False, **kw))
    assert not _COMPILED[None].failed


def test_compile_default_picks_the_decode_step():
    """``set_compile_default`` (perceiverar-app / perceiverar-generate ``--compile``) decides what generate(compile=None)
    runs; a call's own ``compile`` still wins."""
    from perceiverar.decode_step import COMPILE_ON_CPU, _Compiled, decode_one_token, set_compile_default, step_function

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    try:
        set_compile_default("off")
        assert step_function(cpu) is decode_one_token and step_function(cuda) is decode_one_token
        set_compile_default("on")
        assert isinstance(step_function(cpu), _Compiled) and step_function(cpu).mode is None
        assert step_function(cpu, compile=False) is decode_one_token
        set_compile_default("auto")
        assert isinstance(step_function(cuda), _Compiled) and step_function(cuda).mode == "reduce-overhead"
        assert (step_function(cpu) is decode_one_token) != COMPILE_ON_CPU
        set_compile_default(True)
        assert isinstance(step_function(cpu), _Compiled)
        for bad in ("yes", 1):
            with pytest.raises(ValueError, match="compile must be"):
                set_compile_default(bad)
    finally:
        set_compile_default(None)


def test_cache_pool_reuses_caches_of_a_size(debug_model):
    from perceiverar.cache import CachePool

    cfg = debug_model().cfg
    pool = CachePool(keep=2)
    made = []
    key, c = pool.take(cfg, 2, 100, 30, device="cpu", dtype=torch.float32, on_new=made.append)
    assert c.cross_k.shape[2] == 256 and c.cross_out.shape[1] == 256  # rounded up to a power of two, >= 256
    c.context_filled = 5
    pool.give(key, c)
    key2, c2 = pool.take(cfg, 2, 200, 16, device="cpu", dtype=torch.float32, on_new=made.append)
    assert c2 is c and key2 == key and c2.context_filled == 0 and len(made) == 1
    _, c3 = pool.take(cfg, 2, 200, 16, device="cpu", dtype=torch.float32, on_new=made.append)  # c2 is out: a new one
    assert c3 is not c and len(made) == 2


# ------------------------------------------------------------------------------------ sample log-probabilities


def _teacher_forced_log_prob(model, prompt: list[int], new: list[int], n_content: int) -> float:
    """sum over the content ids of log p(id | prompt, earlier ids), from one full forward pass over the whole
    sequence, over the pixel ids (the ids the image constraint allows)."""
    seq = prompt + new
    with torch.inference_mode():
        feats = torch.from_numpy(position_features(seq))[None]
        logits = model(torch.tensor([seq]), feats, n_latents=len(seq))[0].float()  # (L, V): row t predicts t + 1
    lp = logits[:, 256:512].log_softmax(-1)
    rows = torch.arange(len(prompt) - 1, len(prompt) - 1 + n_content)
    return float(lp[rows, torch.tensor(new[:n_content]) - 256].sum())


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_log_probs_are_the_teacher_forced_likelihood_and_leave_sampling_alone(debug_model, cfg_scale):
    model = debug_model(conv_kernel=4)
    prompt = build_sequence("a cat", "image", height=2, width=2, complete=False)
    assert len(prompt) + 14 <= model.cfg.n_latents  # one window: the reference's full pass is the same crop
    con = lambda: ModalityConstraint("image", height=2, width=2)
    scores = torch.zeros(3)
    kw = dict(num_samples=3, seed=4, cfg_scale=cfg_scale, temperature=1.5)
    out = generate(model, prompt, 14, constraint=con(), log_probs=scores, **kw)
    assert torch.equal(out, generate(model, prompt, 14, constraint=con(), **kw))  # scoring changes no sample
    # the conditional model's likelihood, unguided, at temperature 1, whatever the sampling settings
    want = [_teacher_forced_log_prob(model, prompt, r, 12) for r in out.tolist()]
    torch.testing.assert_close(scores, torch.tensor(want), atol=2e-4, rtol=1e-4)
    assert len(set(scores.tolist())) == 3  # three different samples, three different scores
    with pytest.raises(ValueError, match="log_probs"):
        generate(model, prompt, 14, constraint=con(), log_probs=torch.zeros(2), **kw)


# ---------------------------------------------------------------------------------- guidance by section part


def test_guidance_schedule_guides_chord_labels_and_codes_apart():
    from perceiverar.generation import guidance_schedule
    from tokenizers_mm.vocab import CHORD_OFFSET

    plan = [CHORD_OFFSET, 512, 512, CHORD_OFFSET, 512, AUDIO_END, EOS]
    assert guidance_schedule(plan, 3.0, 1.0) == [3.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.0]
    assert guidance_schedule(plan, 3.0, None) is None and guidance_schedule(plan, 3.0, 3.0) is None
    assert guidance_schedule([300, 301, IMAGE_END, EOS], 3.0, 1.0) is None  # no labels: cfg_scale throughout
    assert guidance_schedule(None, 3.0, 1.0) is None


def test_codes_guidance_is_applied_step_by_step(debug_model):
    """Greedy decoding with guidance 3 on the chord labels and 1.5 on the codes equals a reference built from full
    forward passes of the conditional and unconditional sequences, guided per step."""
    from tokenizers_mm.vocab import CHORD_BLOCK, CHORD_OFFSET, N_CHORDS

    model = debug_model(n_latents=128)
    n = CHORD_BLOCK + 4  # two labels
    prompt = build_sequence("a chorale", "audio", n_audio_tokens=n, complete=False, audio_mode="chords")
    uncond = unconditional_prompt(prompt)
    con = lambda: ModalityConstraint("audio", n_audio_tokens=n, content_range=(512, 528), audio_mode="chords")
    out = generate(model, prompt, 64, constraint=con(), top_k=1, cfg_scale=3.0, cfg_scale_codes=1.5)[0].tolist()
    assert len(prompt) + len(out) <= model.cfg.n_latents  # one window: a full pass is the same crop
    ref, c = [], con()
    c.begin(prompt, 1)
    with torch.inference_mode():
        for _ in range(c.tokens_needed()):
            last = []
            for head in (prompt, uncond):
                seq = head + ref
                feats = torch.from_numpy(position_features(seq))[None]
                last.append(model(torch.tensor([seq]), feats, n_latents=len(seq))[:, -1])
            label = bool(c.allowed(model.cfg.vocab_size)[0, CHORD_OFFSET])
            t = c.apply(guide(*last, 3.0 if label else 1.5)).argmax(-1)
            c.update(t)
            ref.append(int(t))
    assert out == ref
    assert CHORD_OFFSET <= out[0] < CHORD_OFFSET + N_CHORDS and CHORD_OFFSET <= out[CHORD_BLOCK + 1] < CHORD_OFFSET + N_CHORDS
    # the same scale for both parts is plain guidance
    plain = generate(model, prompt, 64, constraint=con(), seed=1, cfg_scale=2.0)
    assert torch.equal(generate(model, prompt, 64, constraint=con(), seed=1, cfg_scale=2.0, cfg_scale_codes=2.0), plain)
