"""Constrained decoding: a mask over the logits that makes generation produce one well-formed section.

Every row follows the same plan: the missing header ids, the content, the end markers, then PAD. A row's state is
one integer, how far along the plan it is, kept on the logits' device with a small table of masks (one row per
plan stage), so that masking and advancing cost a few tensor operations and no host synchronisation per token.
Text may end early (TEXT_END jumps a row to its EOS); image and audio rows all finish after ``tokens_needed()``.
"""

from __future__ import annotations

import torch

from tokenizers_mm.vocab import (
    AUDIO_BEGIN, AUDIO_END, EOS, IMAGE_BEGIN, IMAGE_END, MAX_AUDIO_TOKENS, MAX_IMAGE_SIDE, NUM_OFFSET, NUM_VALUES,
    PAD, SEP, TEXT_BEGIN, TEXT_END, allowed_range, audio_section_begin, audio_tokens, chord_block, image_section_begin,
    image_tokens, is_chord_slot, token_name,
)  # fmt: skip

_BEGIN = {"image": IMAGE_BEGIN, "audio": AUDIO_BEGIN}
_END = {"image": IMAGE_END, "audio": AUDIO_END}


class ModalityConstraint:
    """Masks logits so that generation produces one well-formed section of a modality.

    image: [IMAGE_BEGIN h w] (whatever of it the prompt lacks), exactly h*w*3 pixel ids, IMAGE_END, EOS;
           with image_mode="palette", [PALETTE_BEGIN h w] and h*w colour ids (below ``content_range``'s end:
           the palette's size).
    audio: [AUDIO_BEGIN hi lo] likewise, exactly n_audio_tokens codes, AUDIO_END, EOS; with audio_mode="chords",
           [CHORDS_BEGIN hi lo] and a chord label (the "chord" id range) before every CHORD_BLOCK codes.
    text:  byte ids (or TEXT_END to stop early) for at most ``max_bytes`` new bytes, then TEXT_END, EOS.
    After EOS a row only gets PAD; ``done`` is True once every row has finished.

    The prompt (built with ``build_sequence(..., complete=False)``) normally already holds the
    header; ``begin`` checks it against the request and forces whatever part is missing.
    """

    def __init__(
        self,
        modality: str,
        *,
        height: int | None = None,
        width: int | None = None,
        n_audio_tokens: int | None = None,
        max_bytes: int | None = None,
        content_range: tuple[int, int] | None = None,
        image_mode: str = "subpixel",
        audio_mode: str = "codes",
        chord_labels: list[int] | None = None,
        first_chord: int | None = None,
    ):
        """content_range narrows the content ids (e.g. an audio codebook smaller than the vocabulary's room);
        chord_labels (labels 0..24, ``tokenizers_mm.chords``) narrows a chords section's labels, e.g. to the
        diatonic triads of the key the prompt names (``tokenizers_mm.chords.key_chords``); first_chord (a label)
        is the only one the section's first slot may take (a chorale opens on its tonic triad), when the section
        starts in the generated part."""
        if modality not in ("image", "audio", "text"):
            raise ValueError(f"unknown modality {modality!r}; expected image, audio or text")
        self.modality = modality
        self.begin_id = _BEGIN.get(modality)
        if modality == "image":
            for name, v in (("height", height), ("width", width)):
                if v is None or not 1 <= int(v) <= MAX_IMAGE_SIDE:
                    raise ValueError(f"image {name}={v} must be in 1..{MAX_IMAGE_SIDE}")
            self.header = [NUM_OFFSET + int(height), NUM_OFFSET + int(width)]
            self.n_content = image_tokens(height, width, image_mode)
            self.begin_id = image_section_begin(image_mode)
        elif modality == "audio":
            if n_audio_tokens is None or not 1 <= int(n_audio_tokens) <= MAX_AUDIO_TOKENS:
                raise ValueError(f"n_audio_tokens={n_audio_tokens} must be in 1..{MAX_AUDIO_TOKENS}")
            n = int(n_audio_tokens)
            self.header = [NUM_OFFSET + n // NUM_VALUES, NUM_OFFSET + n % NUM_VALUES]
            self.n_content = audio_tokens(n, audio_mode)
            self.begin_id = audio_section_begin(audio_mode)
        else:
            if max_bytes is not None and int(max_bytes) < 0:
                raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
            self.header = []
            self.n_content = None if max_bytes is None else int(max_bytes)
        self.chord_block = chord_block(audio_mode) if modality == "audio" else 0
        clo, chi = allowed_range("chord")
        self.chord_ids = list(range(clo, chi))
        if chord_labels is not None:
            if not self.chord_block:
                raise ValueError(f"chord_labels need an audio section in the chords layout, not {modality} ({audio_mode})")
            ids = sorted({clo + int(c) for c in chord_labels})
            if not ids or not all(clo <= t < chi for t in ids):
                raise ValueError(f"chord_labels must be a non-empty subset of 0..{chi - clo - 1}, got {chord_labels}")
            self.chord_ids = ids
        self.first_chord = None
        if first_chord is not None:
            if not self.chord_block or not 0 <= int(first_chord) < chi - clo:
                raise ValueError(f"first_chord must be a label 0..{chi - clo - 1} of a chords layout, got {first_chord}")
            self.first_chord = clo + int(first_chord)
        self.lo, self.hi = allowed_range(modality)
        if content_range is not None:
            lo, hi = (int(v) for v in content_range)
            if not self.lo <= lo < hi <= self.hi:
                raise ValueError(f"content_range {content_range} is not inside the {modality} range {self.lo}..{self.hi - 1}")
            self.lo, self.hi = lo, hi
        self.pre: list[int] = []
        self.end: list[int] = [TEXT_END, EOS] if modality == "text" else [_END[modality], EOS]
        self._n_left = 0
        self._step = torch.zeros(0, dtype=torch.long)
        self._tables: dict = {}
        self._done_before = 0
        self.audio_mode = audio_mode

    # ------------------------------------------------------------------ set-up from the prompt

    def begin(self, prompt_ids: list[int], batch: int, max_new_tokens: int | None = None) -> None:
        """Read where the prompt stops (header present? content already there?) and reset every row."""
        ids = [int(t) for t in prompt_ids]
        done = 0
        if self.modality == "text":
            opened = max((i for i, t in enumerate(ids) if t == TEXT_BEGIN), default=-1)
            if opened < 0 or any(t in (TEXT_END, EOS) for t in ids[opened:]):
                raise ValueError("a text continuation prompt must end inside an open text section ([BOS] [TEXT_BEGIN] bytes...)")
            self.pre = []
            if self.n_content is None:  # no explicit limit: whatever max_new_tokens leaves room for
                if max_new_tokens is None:
                    raise ValueError("text generation needs max_bytes or max_new_tokens")
                self.n_content = max(0, int(max_new_tokens) - len(self.end))
        else:
            begin = self.begin_id
            at = max((i for i, t in enumerate(ids) if t == begin), default=-1)
            if at >= 0:
                tail = ids[at + 1 :]
                head = tail[: len(self.header)]
                if head != self.header[: len(head)]:
                    raise ValueError(
                        f"the prompt's {self.modality} header {[token_name(t) for t in head]} does not match the "
                        f"request {[token_name(t) for t in self.header]}"
                    )
                self.pre = self.header[len(head) :]
                content = tail[len(self.header) :]
                clo, chi = allowed_range("chord")
                chord = is_chord_slot(range(len(content)), self.audio_mode) if content else []
                bad = [t for t, c in zip(content, chord)
                       if not (clo <= t < chi if c else self.lo <= t < self.hi)]  # fmt: skip
                if bad:
                    raise ValueError(f"the prompt's {self.modality} section holds a non-{self.modality} id {bad[0]} ({token_name(bad[0])})")
                if len(content) > self.n_content:
                    raise ValueError(f"the prompt already holds {len(content)} {self.modality} ids, more than the {self.n_content} requested")
                done = len(content)
            elif ids and ids[-1] == SEP:
                self.pre = [begin, *self.header]
            elif ids and ids[-1] == TEXT_END:
                self.pre = [SEP, begin, *self.header]
            else:
                raise ValueError(
                    f"the prompt must end with the {self.modality} header (build_sequence(..., complete=False)) "
                    f"or with TEXT_END / SEP, not {token_name(ids[-1]) if ids else 'nothing'}"
                )
        self._n_left = self.n_content - done  # content ids still to come
        self._done_before = done  # content ids the prompt holds (where the chord slots fall)
        self._step = torch.zeros(batch, dtype=torch.long)  # (B,): how far each row is along the plan
        self._tables: dict = {}

    def tokens_needed(self) -> int:
        """Tokens every row takes to finish (header rest + content + end markers); text rows may finish sooner."""
        return len(self.pre) + self._n_left + len(self.end)

    def plan(self) -> list[int]:
        """The ids of a row that uses all its content: its position features are those of every row's output
        (``FeatureTracker`` only asks whether an id is content), so generation computes them once, up front."""
        clo = allowed_range("chord")[0]
        slots = is_chord_slot(range(self._done_before, self._done_before + self._n_left), self.audio_mode)
        return [*self.pre, *[clo if c else self.lo for c in slots], *self.end]

    @property
    def may_stop_early(self) -> bool:
        return self.modality == "text"

    # ------------------------------------------------------------------ per token

    @property
    def done(self) -> bool:
        """Every row has finished (a host synchronisation: ask it only when ``may_stop_early``)."""
        return bool((self._step >= self.tokens_needed()).all())

    def _table(self, vocab_size: int, device) -> torch.Tensor:
        """(stages, V) bool: one mask per plan stage: each missing header id, the content, each end id, PAD, and
        for a chords section two last rows, its chord labels and its first chord label."""
        key = (vocab_size, str(device))
        if key not in self._tables:
            stages = [*([t] for t in self.pre), None, *([t] for t in self.end), [PAD]]
            if self.chord_block:
                stages.append(self.chord_ids)
                stages.append([self.first_chord] if self.first_chord is not None else self.chord_ids)
            table = torch.zeros(len(stages), vocab_size, dtype=torch.bool)
            for r, ids in enumerate(stages):
                if ids is None:
                    table[r, self.lo : self.hi] = True
                    if self.modality == "text":
                        table[r, TEXT_END] = True  # text may stop early
                else:
                    table[r, ids] = True
            self._tables[key] = table.to(device)
        return self._tables[key]

    def _stages(self, device) -> torch.Tensor:
        """(B,) each row's plan stage: its step mapped onto the table's rows."""
        if self._step.device != torch.device(device):
            self._step = self._step.to(device)
        n_pre, n_left, n_end = len(self.pre), self._n_left, len(self.end)
        step = self._step
        content_or_pre = torch.where(step < n_pre, step, n_pre)
        ending = n_pre + 1 + (step - n_pre - n_left).clamp(max=n_end)  # end ids, then the PAD row
        if self.chord_block:  # a chord label's slot: the table's second-last row, the section's first one its last
            chord = ((step - n_pre + self._done_before) % (self.chord_block + 1) == 0) & (step >= n_pre)
            first = chord & (step - n_pre + self._done_before == 0)
            content_or_pre = torch.where(chord, n_pre + n_end + 2 + first.long(), content_or_pre)
        return torch.where(step < n_pre + n_left, content_or_pre, ending)

    def allowed(self, vocab_size: int, device=None) -> torch.Tensor:
        """(B, V) bool: the ids each row may take next."""
        device = device if device is not None else self._step.device
        return self._table(vocab_size, device)[self._stages(device)]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (B, V) with disallowed ids at -inf."""
        return logits.masked_fill(~self.allowed(logits.shape[-1], logits.device), float("-inf"))

    def update(self, ids: torch.Tensor) -> None:
        """Advance every row past the id (B,) it just took."""
        stages = self._stages(ids.device)
        nxt = self._step + 1
        if self.modality == "text":  # TEXT_END among the content: EOS comes next
            early = (stages == len(self.pre)) & (ids == TEXT_END)
            nxt = torch.where(early, len(self.pre) + self._n_left + 1, nxt)
        self._step = nxt
