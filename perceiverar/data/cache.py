"""The token cache: each data folder tokenized once into a memory-mapped directory, then reused.

Cache format (one directory per folder, ``<cache_root>/<modality>-<key>/``, written to a temp dir then renamed)
-------------------------------------------------------------------------------------------------------------
``ids.bin``        every item's full token sequence, concatenated, raw little-endian int16 (ids < 5,696), read
                   back with ``np.memmap``. Position features are *not* stored: they need the full sequence
                   (the image header may lie outside a crop) and are cheap to recompute per item (text has none).
``index.npy``      (n_items, 6) int64 rows ``offset, length, prompt_len, split (0 train / 1 val), target_start,
                   target_end``; offsets/lengths in tokens of ``ids.bin``, the target range relative to the item
                   (the pixels, audio codes or text bytes that the bits-per-dim/token/byte metrics average over).
``manifest.json``  format version, key, folder, modality, tokenizer settings, counts, the item file names (aligned
                   with ``index.npy``) and ``skipped``: ``[{"file", "reason"}]`` for every unreadable, corrupt or
                   uncaptioned file (skipped, never a crash).

The key is a hash of the folder's files (relative names and contents), the captions file and the tokenizer
settings (image size; audio codebook fingerprint), so a re-run with unchanged inputs reuses the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from perceiverar.data.codec import AudioCodec, audio_ids, fit_audio_codec
from perceiverar.data.sources import (
    CACHE_FORMAT, VAL_PERMILLE, DatasetError, Entry, SourceSpec, TokenizerSettings, detect_modality, hash_int, is_val,
    list_entries, listing_hash,
)  # fmt: skip
from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.image import ImageTokenizer
from tokenizers_mm.features import paragraph_features, position_features, text_features
from tokenizers_mm.ids import PARAGRAPH_BUCKETS, PARAGRAPH_SLOT
from tokenizers_mm.vocab import BOS, EOS, TEXT_BEGIN, TEXT_END, VOCAB_SIZE, build_sequence

assert VOCAB_SIZE < 2**15  # ids fit int16
# Items shorter than these are skipped (listed in the manifest): they teach nothing and can end up the only val item.
MIN_AUDIO_SECONDS = 0.25
MIN_TEXT_BYTES = 16


def default_cache_dir() -> Path:
    """``$PERCEIVERAR_CACHE``, else ``$XDG_CACHE_HOME/perceiverar/datasets`` (``~/.cache/...``)."""
    if os.environ.get("PERCEIVERAR_CACHE"):
        return Path(os.environ["PERCEIVERAR_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "perceiverar" / "datasets"


class PreparedSource:
    """One tokenized folder, memory-mapped from its cache directory."""

    def __init__(self, directory: Path, weight: float = 1.0):
        self.dir = Path(directory)
        self.weight = float(weight)
        self.manifest = json.loads((self.dir / "manifest.json").read_text())
        self.modality: str = self.manifest["modality"]
        self.index = np.load(self.dir / "index.npy")  # (n, 6) int64
        n_tok = int(self.manifest["n_tokens"])
        self.ids = np.memmap(self.dir / "ids.bin", dtype="<i2", mode="r", shape=(n_tok,)) if n_tok else np.zeros(0, "<i2")
        self.train_items = np.flatnonzero(self.index[:, 3] == 0)
        self.val_items = np.flatnonzero(self.index[:, 3] == 1)

    @property
    def name(self) -> str:
        return Path(self.manifest["folder"]).name

    def __len__(self) -> int:
        return len(self.index)

    def length(self, i: int, drop_prompt: bool = False) -> int:
        off, n, plen = self.index[i, :3]
        return int(n - (plen if drop_prompt else 0))

    def item(self, i: int, drop_prompt: bool = False) -> np.ndarray:
        """Full int64 ids of item i; with ``drop_prompt`` the caption bytes are removed (the empty prompt)."""
        off, n, plen = (int(x) for x in self.index[i, :3])
        ids = np.asarray(self.ids[off : off + n], dtype=np.int64)
        if drop_prompt and plen:
            ids = np.concatenate([ids[:2], ids[2 + plen :]])  # [BOS][TEXT_BEGIN] | prompt | [TEXT_END] ...
        return ids

    def features(self, ids: np.ndarray) -> np.ndarray:
        """(T, 5) position features of a *full* item's ids (text: word and paragraph slots only, no tracker)."""
        if self.modality == "text":
            return text_features(ids)
        return position_features(ids)

    def crop(self, i: int, start: int, end: int, drop_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """ids, features of positions [start, end) of item i; features computed on the full item, then cropped
        (text: the word slot on the crop alone, the paragraph slot counted from the document's start)."""
        if self.modality == "text":
            off = int(self.index[i, 0])
            ids = np.asarray(self.ids[off + start : off + end], dtype=np.int64)
            feats = text_features(ids)
            if start:
                feats[:, PARAGRAPH_SLOT] = paragraph_features(ids, *self._paragraphs_before(off, start))[0]
            return ids, feats
        full = self.item(i, drop_prompt)
        return full[start:end], self.features(full)[start:end]

    def _paragraphs_before(self, off: int, start: int) -> tuple[int, int]:
        """``paragraph_features``' state after the first ``start`` ids of the text item at ``off``, read in 4K
        pieces until ``start`` or until the count is past what the slot shows (the item's ids between its
        [TEXT_BEGIN] and [TEXT_END] are all text, so nothing later can close the section before ``start``)."""
        para, newlines, pos = 0, 0, 0
        while pos < start and para < PARAGRAPH_BUCKETS - 1:
            piece = np.asarray(self.ids[off + pos : off + min(start, pos + 4096)], dtype=np.int64)
            _, para, newlines = paragraph_features(piece, para, newlines)
            pos += len(piece)
        return para, newlines

    def target_range(self, i: int) -> tuple[int, int]:
        return int(self.index[i, 4]), int(self.index[i, 5])

    def file(self, i: int) -> str:
        return self.manifest["items"][i]


def _cache_key(spec_path: Path, modality: str, entries: list[Entry], settings: TokenizerSettings, codec) -> str:
    relevant = {"format": CACHE_FORMAT, "folder": str(spec_path), "modality": modality}
    if modality == "image":
        relevant["image"] = [settings.image_height, settings.image_width, settings.image_resize]
        if settings.image_mode != "subpixel":  # (keys of sub-pixel caches made before the palette mode unchanged)
            relevant["image_mode"] = settings.image_mode
            relevant["palette"] = [list(c) for c in settings.image_palette or ()]
    if modality == "audio":
        relevant["audio_codec"] = codec.fingerprint
        if settings.audio_mode != "codes":  # (keys of caches made before the chords mode unchanged)
            relevant["audio_mode"] = settings.audio_mode
    h = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    h.update(listing_hash(spec_path, entries).encode())
    return h.hexdigest()[:20]


def _tokenize(spec: SourceSpec, modality: str, e: Entry, settings, image_tok, codec) -> tuple[list[int], int, int, int]:
    """ids of one entry, its prompt length and target range; raises TokenizerError/OSError/... on bad files."""
    path = spec.path / e.file
    if modality == "text":
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise TokenizerError(f"not UTF-8 text ({err})") from None
        if len(raw) < MIN_TEXT_BYTES:
            raise TokenizerError(f"too short: {len(raw)} bytes of text (at least {MIN_TEXT_BYTES} needed)")
        ids = [BOS, TEXT_BEGIN, *raw, TEXT_END, EOS]
        return ids, 0, 2, len(ids) - 2
    prompt = e.text.encode("utf-8")
    if modality == "image":
        target = image_tok.encode(path)
        ids = build_sequence(prompt, "image", target, height=image_tok.height, width=image_tok.width,
                             image_mode=image_tok.mode)
    else:
        target = audio_ids(codec, path, settings.audio_mode)
        need = math.ceil(MIN_AUDIO_SECONDS * codec.tokenizer.tokens_per_second)
        if len(target) < need:  # a corrupt MIDI file can render to a click: not a piece to learn from
            raise TokenizerError(f"too short: {len(target)} audio codes, {len(target) / codec.tokenizer.tokens_per_second:.2f} s "
                                 f"(at least {MIN_AUDIO_SECONDS} s needed; an empty, silent or corrupt file?)")  # fmt: skip
        ids = build_sequence(prompt, "audio", target, audio_mode=settings.audio_mode)
    start = 2 + len(prompt) + 5  # [BOS][TEXT_BEGIN] p [TEXT_END][SEP][BEGIN][h][w]
    return ids, len(prompt), start, start + len(target)


def prepare_source(
    spec: SourceSpec,
    settings: TokenizerSettings,
    cache_root: str | os.PathLike,
    *,
    codec: AudioCodec | None = None,
    progress: bool = True,
    log=print,
) -> PreparedSource:
    """Tokenize ``spec``'s folder once into the cache (or reuse it) and memory-map it."""
    folder = spec.path
    if not folder.is_dir():
        raise DatasetError(f"data folder {str(folder)!r} does not exist or is not a directory")
    modality = spec.modality or detect_modality(folder)
    if modality not in ("image", "audio", "text"):
        raise DatasetError(f"unknown modality {modality!r}; expected image, audio or text")
    entries, skipped = list_entries(folder, modality, settings.caption_template)
    if not entries:
        why = f" ({len(skipped)} files skipped: {skipped[0]['file']}: {skipped[0]['reason']} ...)" if skipped else ""
        raise DatasetError(f"{modality} folder {str(folder)!r} is empty: no items to train on{why}")
    if modality == "audio" and codec is None:
        raise DatasetError("an audio folder needs a fitted audio codebook (fit_audio_codec)")
    key = _cache_key(folder, modality, entries, settings, codec)
    final = Path(cache_root) / f"{modality}-{key}"
    if (final / "manifest.json").is_file():
        src = PreparedSource(final, spec.weight)
        _check_usable(src, folder)
        return src

    image_tok = image_tokenizer(settings) if modality == "image" else None
    with writing_dir(final) as tmp:
        rows, files, offset = [], [], 0
        with open(tmp / "ids.bin", "wb") as fh:
            for e in tqdm(entries, desc=f"tokenizing {folder.name} ({modality})", unit="file", disable=not progress):
                try:
                    ids, plen, a, b = _tokenize(spec, modality, e, settings, image_tok, codec)
                except (TokenizerError, OSError, ValueError, RuntimeError, MemoryError) as err:
                    skipped.append({"file": e.file, "reason": f"{type(err).__name__}: {err}"})
                    continue
                np.asarray(ids, dtype="<i2").tofile(fh)
                rows.append([offset, len(ids), plen, int(is_val(e.file)), a, b])
                files.append(e.file)
                offset += len(ids)
        index = np.asarray(rows, dtype=np.int64).reshape(-1, 6)
        index, files = _fix_split(index, files, modality)
        manifest = {
            "format_version": CACHE_FORMAT,
            "key": key,
            "folder": str(folder),
            "modality": modality,
            "tokenizer": _settings_for(modality, settings, codec),
            "n_items": len(index),
            "n_train": int((index[:, 3] == 0).sum()),
            "n_val": int((index[:, 3] == 1).sum()),
            "n_tokens": int(offset),
            "n_skipped": len(skipped),
            "skipped": skipped,
            "items": files,
        }
        np.save(tmp / "index.npy", index)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if skipped:
        log(f"{folder}: skipped {len(skipped)} file(s) (listed in {final / 'manifest.json'}), e.g. "
            f"{skipped[0]['file']}: {skipped[0]['reason']}")
    src = PreparedSource(final, spec.weight)
    _check_usable(src, folder)
    return src


@contextmanager
def writing_dir(final: Path):
    """A temp directory beside ``final`` to write a cache entry into, renamed to ``final`` when the block ends (or
    dropped if a concurrent writer finished first), removed if the block raises: no half-written entry is left."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():  # a concurrent preparer finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_usable(src: PreparedSource, folder: Path) -> None:
    if len(src) == 0:
        sk = src.manifest["skipped"]
        raise DatasetError(
            f"{src.modality} folder {str(folder)!r} is empty after skipping {len(sk)} unreadable file(s) "
            f"(e.g. {sk[0]['file']}: {sk[0]['reason']}); see {src.dir / 'manifest.json'}"
            if sk else f"{src.modality} folder {str(folder)!r} is empty"
        )


def image_tokenizer(s: TokenizerSettings) -> ImageTokenizer:
    """The image tokenizer that these settings describe (size, resize policy, layout, palette)."""
    return ImageTokenizer(s.image_height, s.image_width, s.image_resize, mode=s.image_mode, palette=s.image_palette)


def _settings_for(modality: str, s: TokenizerSettings, codec) -> dict:
    if modality == "image":
        return image_tokenizer(s).to_dict()
    if modality == "audio":
        return {"codebook_size": s.audio_codebook_size, "codec_fingerprint": codec.fingerprint}
    return {}


def _fix_split(index: np.ndarray, files: list[str], modality: str) -> tuple[np.ndarray, list[str]]:
    """Make sure a usable folder has both a train and a val part (see the module docstring)."""
    n = len(index)
    n_val = int((index[:, 3] == 1).sum())
    if n == 0 or (0 < n_val < n):
        return index, files
    if n >= 2:
        index[:, 3] = 0
        index[int(np.argmin([hash_int(f) for f in files])), 3] = 1
        return index, files
    if modality == "text":  # one document: its last 5 % is the val row
        rows, out_files = [], []
        for row, f in zip(index, files):
            off, length, plen, _, a, b = (int(x) for x in row)
            cut = a + int((b - a) * (1 - VAL_PERMILLE / 1000))
            rows.append([off, cut, plen, 0, a, cut])
            rows.append([off + cut, length - cut, 0, 1, 0, b - cut])
            out_files += [f, f + "#tail"]
        return np.asarray(rows, dtype=np.int64), out_files
    index[:, 3] = 0  # a single media item: train on it, no validation
    return index, files


def prepare_sources(
    specs: list[SourceSpec],
    settings: TokenizerSettings,
    cache_root: str | os.PathLike,
    *,
    codec: AudioCodec | None = None,
    progress: bool = True,
    log=print,
) -> tuple[list[PreparedSource], AudioCodec | None]:
    """Prepare every folder; fit one audio codebook for all audio folders first when needed."""
    if not specs:
        raise DatasetError("no data folders given (use --data DIR)")
    specs = [s if s.modality else SourceSpec(s.path, s.weight, detect_modality(s.path)) for s in specs]
    audio = [s for s in specs if s.modality == "audio"]
    if audio and codec is None:
        codec = fit_audio_codec(audio, settings, cache_root, progress=progress, log=log)
    sources = [prepare_source(s, settings, cache_root, codec=codec, progress=progress, log=log) for s in specs]
    if codec is not None:
        codec.waveforms.clear()
    return sources, codec
