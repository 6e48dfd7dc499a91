"""Batches: a weighted mixture of prepared folders -> equal-length random crops.

Each optimizer micro-step samples one crop length for the whole (global) batch, so a batch needs no padding
(left padding would shift positions and add PAD keys the model would attend). Length ``l`` is uniform in
``[min(N + 1, m), min(L + 1, m)]`` where ``m`` is the shortest item in the batch; an item no longer than L + 1
gives its prefix of length ``l`` (so generation's situation, whole prompt in context, is what training sees and
every prefix length is trained), a longer item (a text document) a window of length ``l`` ending anywhere. The
batch for (step, micro) is a pure function of ``(seed, step, micro)``: resuming and sharding over ranks (each
rank takes its rows of the same global batch) are exact by construction.

Whole items (``whole_items``, the default of ``perceiverar-train``): when every item of a batch fits in the
latents (length <= N + 1), the batch is the whole items, right-padded with PAD to the longest, and the loss
is on the media only (the target and its end markers; ``stats["loss_mask"]``). Every target position is then
trained equally often, the first pixel row as often as the last (a prefix crop of random length makes the
first row a target in a few percent of crops only), and the caption sits among the latents, where the
self-attention stack reads it in order. Right padding is exact: causal attention never lets a position see
the PAD after it, and masked targets do not count.

Uniform windows (also ``whole_items``): an item longer than the latents but inside the context (a music clip)
gets a prefix crop whose last N positions hold the targets, the window placed so that every target position
is equally likely to be trained: a virtual window end v is uniform over [target start, target end + N - 1],
the targets are [v - N + 1, v] clipped to the item, and the crop ends at the last of them (the whole prompt
stays in context, as at generation). One uniform draw per batch places every row (each row is still uniform
over its own span), so the rows' crops differ only by their prompts' lengths; they are right-padded and the
batch's latents cover every row's targets (``stats["n_latents"]``, at most N plus that difference).

Caption parts (``caption_part_dropout``, whole items and uniform windows only): a caption written as parts
joined by ``;`` ("blue heart; smileys & emotion; heart; google style") loses each part after the first with
this probability, independently. The first part (the name) is then often the only thing that tells the model
what to draw, so it cannot lean on the shared category and style parts alone and leave the name unread, and
prompts that give fewer parts than the training captions (a user's "blue heart") are in distribution.

Opening weight (``opening_weight`` over ``opening_tokens``, whole items and uniform windows only): the first
``opening_tokens`` targets of each item's media count ``opening_weight`` times in the loss (``stats["loss_mask"]``
is then a float weight). At the opening of a clip or image only the caption can tell the model what comes (a
chorale's key is evident from its own audio a second in, so a model can lower its loss almost everywhere
without reading the key); the weight puts the gradient where the caption matters.

Re-renders (``rerender``, image items trained whole): a captioned image's pixels are, with some probability, one
of its re-renders from the source file, shifted and scaled by a fraction of a pixel (:mod:`perceiverar.data.rerender`),
before the mirror and the colour augmentation.

Augmentation tags (``augment_tags``, with ``rerender`` or ``mirror``): a row whose pixels were re-rendered or
mirrored says so at the end of its caption ("...; google style; re-rendered; mirrored"), after the parts are
thinned, so the tags are never dropped. As in distribution augmentation (DistAug, Jun et al. 2020), the model
learns the augmented pictures as their own distribution, and a prompt without a tag asks for the original
pictures only; without tags, the samples drift towards what the augmentations make (blurred styles, flipped flags).

Colour words (``colour_augment``, palette-mode image items trained whole): a colour tag in front of the name and
hue-rotated images with captions that say their new colour (:mod:`perceiverar.data.colour_augment`), applied
before the caption parts are thinned.

Chord weight (``chord_weight``, whole items and uniform windows only): every chord label of a "chords" audio
section (``tokenizers_mm.chords``) counts ``chord_weight`` times in the loss. The labels are one id in 23, but
they carry the decisions the caption should steer (the key, the harmony); the codes after them mostly render them.

Opening clips (``opening_clips`` = (probability, codes), audio only): with this probability a batch holds the
first ``codes`` audio codes of each item (and their chord labels), with the header rewritten to that length and
the end markers after them: the clip a user asks for, trained whole (or in uniform windows if it does not fit
the latents). Items no longer than that are trained as they are.

A batch with buried captions (:class:`~perceiverar.data.filler.Filler`) holds the whole prompt and the first
``k`` tokens after it (``k`` uniform in ``[N, header + target]``, so the latents, where the loss is, sit on the
media, not on the filler), and the filler is sized so every row of the batch has one length, drawn in
``[longest need, L + 1]`` (uniform, or log-uniform with ``--filler-lengths log``; ``--filler-tokens`` keeps fewer
rows of a long one): every caption-to-target distance the context allows is trained.

Balanced draws (``balance`` = (field, power)): items are drawn with probability proportional to the size of their
captions.jsonl group (e.g. the emoji category) to the power ``-power`` instead of uniformly
(:mod:`perceiverar.data.balance`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from perceiverar.data.balance import balanced_probs
from perceiverar.data.cache import PreparedSource
from perceiverar.data.colour_augment import SEPARATOR, ColourAugment
from perceiverar.data.filler import Filler, prompted_sequence
from perceiverar.data.mirror import Mirror
from perceiverar.data.rerender import Rerender
from perceiverar.data.sources import DatasetError
from tokenizers_mm.vocab import (
    AUDIO_END, AUDIO_MODE_OF_BEGIN, EOS, N_FEATURES, PAD, allowed_range, audio_header, audio_tokens,
)  # fmt: skip


MAX_PARTS = 8  # caption_part_dropout: parts after the 8th are always kept
RERENDERED, MIRRORED = "re-rendered", "mirrored"  # augment_tags: the caption parts that name an augmentation


def tag_caption(ids: np.ndarray, plen: int, tags: list[str]) -> tuple[np.ndarray, int]:
    """Row ids [BOS] [TEXT_BEGIN] caption (plen) ... -> the same with "; tag" appended to the caption for each of
    ``tags``, and the new caption length."""
    if not tags:
        return ids, plen
    extra = np.frombuffer("".join(f"{chr(SEPARATOR)} {t}" for t in tags).encode(), dtype=np.uint8).astype(ids.dtype)
    return np.concatenate([ids[: 2 + plen], extra, ids[2 + plen :]]), plen + len(extra)


def thin_caption(caption: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The caption's byte tokens without the ``;``-separated parts whose ``keep`` is False (the first part, the
    name, always stays; a dropped part goes with the separator before it and the spaces after that)."""
    cuts = np.flatnonzero(caption == SEPARATOR)  # (parts - 1,)
    if not len(cuts) or keep[1 : len(cuts) + 1].all():
        return caption
    bounds = [0, *cuts.tolist(), len(caption)]
    out = [caption[: bounds[1]]]
    for p in range(1, len(bounds) - 1):
        if p >= len(keep) or keep[p]:
            out.append(caption[bounds[p] : bounds[p + 1]])
    return np.concatenate(out)


@dataclass
class Mixture:
    """Weighted mixture of prepared sources -> equal-length crop batches, a pure function of (seed, step, micro)."""

    sources: list[PreparedSource]
    context_len: int  # L
    n_latents: int  # N
    prompt_dropout: float = 0.1
    seed: int = 0
    filler: Filler | None = None
    whole_items: bool = False  # items that fit in the latents are trained whole (see the module docstring)
    caption_part_dropout: float = 0.0  # drop each ";" part of a caption after the first (module docstring)
    colour_augment: ColourAugment | None = None  # colour tags / hue rotation of palette images (whole items)
    mirror: Mirror | None = None  # left-right flips of captioned images (whole items; perceiverar/data/mirror.py)
    rerender: Rerender | None = None  # re-rendered captioned images (whole items; perceiverar/data/rerender.py)
    augment_tags: bool = False  # name re-renders and mirrors at the end of their captions (module docstring)
    opening_weight: float = 1.0  # loss weight of each item's first ``opening_tokens`` targets (module docstring)
    opening_tokens: int = 0
    chord_weight: float = 1.0  # loss weight of each chord label (module docstring)
    opening_clips: tuple = (0.0, 0)  # (probability, audio codes): batches of clip openings (module docstring)
    row_multiple: int = 1  # a batch that keeps fewer rows (--filler-tokens) keeps a multiple of this (the world)
    balance: tuple[str, float] | None = None  # (captions.jsonl field, power): perceiverar/data/balance.py
    probs: np.ndarray = field(init=False)
    item_probs: list = field(init=False)  # per source: draw probabilities of its train items (None: uniform)
    group_shares: list = field(init=False)  # per source: each group's share of the draws under ``balance``

    def __post_init__(self):
        w = np.asarray([s.weight if len(s.train_items) else 0.0 for s in self.sources], dtype=np.float64)
        if w.sum() <= 0:
            raise DatasetError("no training items in any data folder")
        self.probs = w / w.sum()
        self.item_probs, self.group_shares = [], []
        for src in self.sources:
            p, shares = (None, {})
            if self.balance is not None and len(src.train_items):
                p, shares = balanced_probs(src, *self.balance)
            self.item_probs.append(p)
            self.group_shares.append(shares)

    def batch(self, step: int, micro: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Global batch ``rows`` x (l) tokens and (rows, l, F) features for one micro-step; plus stats."""
        rng = np.random.default_rng([self.seed, step, micro])
        picks = []
        for _ in range(rows):
            s = int(rng.choice(len(self.sources), p=self.probs))
            src = self.sources[s]
            p = self.item_probs[s]
            i = int(src.train_items[rng.integers(len(src.train_items)) if p is None else rng.choice(len(p), p=p)])
            drop = bool(src.index[i, 2] > 0 and rng.random() < self.prompt_dropout)
            picks.append((s, i, drop))
        if self.filler is not None and rng.random() < self.filler.prob:
            if all(self.sources[s].modality != "text" for s, _, _ in picks):
                return self._buried_batch(rng, picks)
        clip = self.opening_clips[0] > 0 and float(rng.random()) < self.opening_clips[0]
        if clip and all(self.sources[s].modality == "audio" for s, _, _ in picks):
            rows_ = [opening_clip(*self._row(rng, s, i, d), self.opening_clips[1]) for s, i, d in picks]
            if max(len(ids) for ids, _ in rows_) <= min(self.n_latents, self.context_len) + 1:
                return self._whole_batch(picks, rows_)
            return self._uniform_batch(rng, picks, rows_)
        if self.whole_items:
            rows_ = [self._row(rng, s, i, d) for s, i, d in picks]
            lens = [len(ids) for ids, _ in rows_]
            if max(lens) <= min(self.n_latents, self.context_len) + 1:
                return self._whole_batch(picks, rows_)
            if max(lens) <= self.context_len + 1:
                return self._uniform_batch(rng, picks, rows_)
        m = min(self.sources[s].length(i, d) for s, i, d in picks)
        hi = min(self.context_len + 1, m)
        lo = min(self.n_latents + 1, hi)
        length = int(rng.integers(lo, hi + 1))
        toks, feats = [], []
        for s, i, drop in picks:
            src = self.sources[s]
            n = src.length(i, drop)
            if n <= self.context_len + 1:
                start = 0  # a prefix: the whole prompt is in context, as at generation time
            else:
                start = int(rng.integers(length, n + 1)) - length  # a window ending anywhere
            ids, f = src.crop(i, start, start + length, drop)
            toks.append(ids)
            feats.append(f)
        tokens = torch.from_numpy(np.stack(toks))  # (rows, l)
        features = torch.from_numpy(np.stack(feats))  # (rows, l, F)
        stats = {"seq_len": length, "dropped_prompts": sum(d for _, _, d in picks)}
        return tokens, features, stats

    def _row(self, rng: np.random.Generator, s: int, i: int, drop: bool) -> tuple[np.ndarray, int]:
        """Item i of source s as trained whole: its ids (caption dropped, or thinned to some of its parts) and
        where its target starts."""
        src = self.sources[s]
        full = int(src.index[i, 2])
        ids, plen = src.item(i, drop), 0 if drop else full
        tags = []  # augment_tags: apply() returns its input array itself when it leaves the row as it is
        if self.rerender is not None and src.modality == "image":
            new = self.rerender.apply(rng, s, i, ids, plen, src.target_range(i)[0])
            tags += [RERENDERED] if new is not ids else []
            ids = new
        if self.mirror is not None and src.modality == "image":
            new = self.mirror.apply(rng, ids, plen)
            tags += [MIRRORED] if new is not ids else []
            ids = new
        if self.colour_augment is not None and src.modality == "image":
            ids, plen = self.colour_augment.apply(rng, ids, plen)
        if self.caption_part_dropout > 0 and plen:
            keep = rng.random(MAX_PARTS) >= self.caption_part_dropout  # a fixed number of draws per row
            caption = thin_caption(ids[2 : 2 + plen], keep)
            ids = np.concatenate([ids[:2], caption, ids[2 + plen :]])  # [BOS][TEXT_BEGIN] | caption | ...
            plen = len(caption)
        if self.augment_tags:
            ids, plen = tag_caption(ids, plen, tags)
        return ids, src.target_range(i)[0] - (full - plen)

    def _whole_batch(self, picks: list, rows_: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Whole items right-padded to the longest; loss mask on each item's target and end markers."""
        length = max(len(ids) for ids, _ in rows_)
        tokens = torch.full((len(picks), length), PAD, dtype=torch.long)  # (rows, l)
        features = torch.zeros((len(picks), length, N_FEATURES), dtype=torch.long)  # (rows, l, F)
        mask = torch.zeros((len(picks), length), dtype=torch.bool)  # (rows, l): which targets count
        for r, ((s, _, _), (ids, start)) in enumerate(zip(picks, rows_)):
            n = len(ids)
            tokens[r, :n] = torch.from_numpy(ids)
            features[r, :n] = torch.from_numpy(self.sources[s].features(ids))
            mask[r, start:n] = True
        mask = self._weighted(mask, [start for _, start in rows_], tokens)
        stats = {"seq_len": length, "dropped_prompts": sum(d for _, _, d in picks), "loss_mask": mask}
        return tokens, features, stats

    def _weighted(self, mask: torch.Tensor, starts: list[int], tokens: torch.Tensor) -> torch.Tensor:
        """``mask`` (rows, l) bool, as a float weight: ``opening_weight`` on each row's first ``opening_tokens``
        targets from its media start ``starts[r]``, ``chord_weight`` on chord labels (``tokens`` (rows, l)); the
        bool mask unchanged when neither weight is set."""
        opening = self.opening_weight != 1.0 and self.opening_tokens > 0
        if not opening and self.chord_weight == 1.0:
            return mask
        w = mask.float()  # (rows, l)
        if opening:
            for r, t0 in enumerate(starts):
                w[r, t0 : t0 + self.opening_tokens] *= self.opening_weight
        if self.chord_weight != 1.0:
            lo, hi = allowed_range("chord")
            w = torch.where((tokens >= lo) & (tokens < hi), w * self.chord_weight, w)
        return w

    def _uniform_batch(self, rng: np.random.Generator, picks: list, rows_: list[tuple[np.ndarray, int]]
                       ) -> tuple[torch.Tensor, torch.Tensor, dict]:  # fmt: skip
        """Prefix crops whose loss windows cover every target position equally often (module docstring)."""
        N, q = self.n_latents, float(rng.random())
        rows = []
        for (s, _, _), (ids, t0) in zip(picks, rows_):
            n = len(ids)
            v = t0 + int(q * (n - t0 + N - 1))  # virtual window end, uniform over [t0, n - 1 + N - 1]
            rows.append((s, ids, max(t0, v - N + 1), min(v, n - 1), t0))  # targets [lo, hi]
        length = max(hi for _, _, _, hi, _ in rows) + 1
        tokens = torch.full((len(rows), length), PAD, dtype=torch.long)  # (rows, l)
        features = torch.zeros((len(rows), length, N_FEATURES), dtype=torch.long)  # (rows, l, F)
        mask = torch.zeros((len(rows), length), dtype=torch.bool)  # (rows, l)
        for r, (s, ids, lo, hi, _) in enumerate(rows):
            tokens[r, : hi + 1] = torch.from_numpy(ids[: hi + 1])
            features[r, : hi + 1] = torch.from_numpy(self.sources[s].features(ids)[: hi + 1])
            mask[r, lo : hi + 1] = True
        mask = self._weighted(mask, [t0 for *_, t0 in rows], tokens)
        # Target p is predicted by input position p - 1: the latents (the last n inputs) must reach min lo - 1.
        n = length - min(lo for _, _, lo, _, _ in rows)
        stats = {"seq_len": length, "dropped_prompts": sum(d for _, _, d in picks), "loss_mask": mask, "n_latents": n}
        return tokens, features, stats

    def _buried_batch(self, rng: np.random.Generator, picks: list) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """A batch whose captions are buried in filler text (see "Long prompts" in the module docstring)."""
        rows = []
        for s, i, drop in picks:
            src = self.sources[s]
            ids = src.item(i)
            plen = int(src.index[i, 2])
            caption = ids[2 : 2 + plen] if not drop else ids[:0]
            rest = ids[2 + plen :]  # [TEXT_END] [SEP] [BEGIN] [h] [w] target [END] [EOS]
            # Tokens after the prompt inside the crop: at least N, so the latents (and the loss) sit on the
            # header and target only; the filler is context to look past, not text to learn.
            k = int(rng.integers(min(self.n_latents, len(rest)), len(rest) + 1))
            where = self.filler.where(rng)
            rows.append((caption, rest, k, where))
        need = max(2 + len(c) + k for c, _, k, _ in rows)  # no filler at all
        length = self.filler.length(rng, need, self.context_len)
        rows = rows[: self.filler.rows(length, len(rows), self.row_multiple)]
        toks, feats, fill = [], [], []
        for caption, rest, k, where in rows:
            prompt = self.filler.prompt(rng, caption, where, length - 2 - k)
            ids, feat = prompted_sequence(prompt, rest[:k])  # (length,), (length, 3)
            toks.append(ids)
            feats.append(feat)
            fill.append(len(prompt) - len(caption))
        tokens = torch.from_numpy(np.stack(toks))  # (rows, l)
        features = torch.from_numpy(np.stack(feats))  # (rows, l, F)
        stats = {"seq_len": length, "dropped_prompts": sum(d for _, _, d in picks), "filler_bytes": fill}
        return tokens, features, stats


def opening_clip(ids: np.ndarray, start: int, n_codes: int) -> tuple[np.ndarray, int]:
    """An audio item (``ids``, its content from ``start``) cut to its first ``n_codes`` codes (and their chord
    labels): the header says ``n_codes``, the end markers follow. An item no longer than that comes back as it is."""
    mode = AUDIO_MODE_OF_BEGIN[int(ids[start - 3])]  # [BEGIN] [NUM hi] [NUM lo] content
    keep = audio_tokens(n_codes, mode)
    if len(ids) - start - 2 <= keep:  # content + [AUDIO_END] [EOS]
        return ids, start
    out = np.concatenate([ids[: start - 2], audio_header(n_codes), ids[start : start + keep], [AUDIO_END, EOS]])
    return out.astype(ids.dtype), start
