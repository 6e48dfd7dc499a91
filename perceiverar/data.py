"""Training data: folders of captioned media or plain text -> a tokenized, memory-mapped cache -> random crops.

Folders
-------
- image: PNG/JPEG/GIF/BMP/WebP/TIFF files with a ``captions.jsonl`` (``{"file": "rel/path.png", "text": ...}``
  per line, the format of ``../shared/data/emoji``) or a ``.txt`` caption beside each file (``a.png`` + ``a.txt``).
- audio: WAV/FLAC/OGG/MP3 files, or MIDI files (rendered with fluidsynth by the audio tokenizer), captioned the
  same two ways (``../shared/data/bach``).
- text: plain ``.txt`` files; each file is one long document, laid out ``[BOS][TEXT_BEGIN] bytes [TEXT_END][EOS]``
  (``../shared/data/shakespeare``).

The modality is detected from the file types (media files win over ``.txt``, which may be captions) or forced.

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

The key is a hash of the folder listing (relative names, sizes, mtimes), the captions file and the tokenizer
settings (image size; audio codebook fingerprint), so a re-run with unchanged inputs reuses the cache.

Validation split: deterministic by a hash of the item's relative file name (~5 %). A folder too small to hold a
val item that way gives its lowest-hash item to val; a text folder with fewer than 2 documents holds out the last
5 % of each document instead (a separate index row over the same ids).

Crops (:class:`Mixture`)
------------------------
Each optimizer micro-step samples one crop length for the whole (global) batch, so a batch needs no padding
(left padding would shift positions and add PAD keys the model would attend). Length ``l`` is uniform in
``[min(N + 1, m), min(L + 1, m)]`` where ``m`` is the shortest item in the batch; an item no longer than L + 1
gives its prefix of length ``l`` (so generation's situation, whole prompt in context, is what training sees and
every prefix length is trained), a longer item (a text document) a window of length ``l`` ending anywhere. The
batch for (step, micro) is a pure function of ``(seed, step, micro)``: resuming and sharding over ranks (each
rank takes its rows of the same global batch) are exact by construction.

Long prompts (:class:`Filler`, ``perceiverar-train --filler DIR``)
------------------------------------------------------------------
So that a caption still steers the output from far away, a fraction of the media batches get their caption
buried in a long run of unrelated text (another folder's training documents, e.g. Shakespeare): the prompt
becomes ``caption + blank line + filler``, ``filler + blank line + caption`` or the caption in the middle of
the filler (a third of the time each; a dropped caption leaves the filler alone). The crop holds the whole
prompt and the first ``k`` tokens after it (``k`` uniform in ``[N, header + target]``, so the latents, where
the loss is, sit on the media, not on the filler), and the filler is sized so every row of the batch has one
length, drawn uniform in ``[longest need, L + 1]``: every caption-to-target distance the context allows is
trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tokenizers_mm.errors import TokenizerError
from tokenizers_mm.image import ImageTokenizer
from tokenizers_mm.vocab import (
    BOS, EOS, N_FEATURES, TEXT_BEGIN, TEXT_END, VOCAB_SIZE, build_sequence, position_features,
)  # fmt: skip

CACHE_FORMAT = 1
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3", ".mid", ".midi"}
TEXT_EXTS = {".txt"}
CAPTIONS = "captions.jsonl"
VAL_PERMILLE = 50  # ~5 % held out
AUDIO_TOKENIZER_DIR = "audio_tokenizer"
assert VOCAB_SIZE < 2**15  # ids fit int16


class DatasetError(ValueError):
    """A data folder that cannot be used (missing, no captions, nothing readable); the message says why."""


# ------------------------------------------------------------------------------------------------ sources


@dataclass(frozen=True)
class SourceSpec:
    """One ``--data DIR[:weight]`` argument."""

    path: Path
    weight: float = 1.0
    modality: str | None = None


def parse_data_arg(arg: str, modality: str | None = None) -> SourceSpec:
    """``DIR`` or ``DIR:weight`` (a colon inside the path is kept unless what follows the last one is a number)."""
    path, weight = arg, 1.0
    if ":" in arg:
        head, tail = arg.rsplit(":", 1)
        try:
            weight = float(tail)
            path = head
        except ValueError:
            pass
    if not math.isfinite(weight) or weight <= 0:
        raise DatasetError(f"--data {arg!r}: the weight must be a positive number, got {weight}")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DatasetError(f"data folder {str(p)!r} does not exist or is not a directory")
    return SourceSpec(p.resolve(), weight, modality)


def _files(folder: Path) -> list[Path]:
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return out


def detect_modality(folder: Path) -> str:
    """'image', 'audio' or 'text' from the file types in ``folder`` (media files win over .txt captions)."""
    files = _files(folder)
    exts = {f.suffix.lower() for f in files}
    n_img = sum(f.suffix.lower() in IMAGE_EXTS for f in files)
    n_aud = sum(f.suffix.lower() in AUDIO_EXTS for f in files)
    if n_img or n_aud:
        return "image" if n_img >= n_aud else "audio"
    if exts & TEXT_EXTS:
        return "text"
    raise DatasetError(
        f"data folder {str(folder)!r} holds no images ({', '.join(sorted(IMAGE_EXTS))}), audio "
        f"({', '.join(sorted(AUDIO_EXTS))}) or .txt files: nothing to train on"
    )


@dataclass
class Entry:
    file: str  # relative to the folder, '/'-separated
    text: str | None  # caption (None for text documents)


def caption_from(obj: dict, template: str) -> str:
    """The caption of one captions.jsonl record: ``template`` filled from its fields (``"{text}; {style} style"``)."""
    try:
        return template.format(**obj)
    except KeyError as e:
        raise KeyError(f"the caption template {template!r} needs the field {e.args[0]!r}, absent here") from None
    except (ValueError, IndexError) as e:
        raise KeyError(f"the caption template {template!r} is not a valid format string ({e})") from None


def list_entries(folder: Path, modality: str, caption_template: str = "{text}") -> tuple[list[Entry], list[dict]]:
    """The folder's items and the files skipped while listing (missing, uncaptioned, bad captions lines).

    ``caption_template`` builds each caption from its captions.jsonl fields (a caption file's text is ``{text}``).
    """
    skipped: list[dict] = []
    files = _files(folder)
    if modality == "text":
        entries = [Entry(f.relative_to(folder).as_posix(), None) for f in files if f.suffix.lower() in TEXT_EXTS]
        return entries, skipped
    exts = IMAGE_EXTS if modality == "image" else AUDIO_EXTS
    media = [f for f in files if f.suffix.lower() in exts]
    cap_file = folder / CAPTIONS
    if cap_file.is_file():
        entries = []
        listed = set()
        for k, line in enumerate(cap_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                rel, text = obj["file"], obj["text"]
                if not isinstance(rel, str) or not isinstance(text, str):
                    raise TypeError("'file' and 'text' must be strings")
                text = caption_from(obj, caption_template)
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                skipped.append({"file": f"{CAPTIONS}:{k}", "reason": f"bad captions line ({type(e).__name__}: {e})"})
                continue
            if not (folder / rel).is_file():
                skipped.append({"file": rel, "reason": "listed in captions.jsonl but missing"})
                continue
            listed.add(rel)
            entries.append(Entry(rel, text))
        for f in media:
            rel = f.relative_to(folder).as_posix()
            if rel not in listed:
                skipped.append({"file": rel, "reason": "no caption in captions.jsonl"})
        return entries, skipped
    entries = []
    for f in media:
        cap = f.with_suffix(".txt")
        rel = f.relative_to(folder).as_posix()
        if cap.is_file():
            text = cap.read_text(encoding="utf-8", errors="replace").strip()
            try:
                entries.append(Entry(rel, caption_from({"text": text, "file": rel}, caption_template)))
            except KeyError as e:
                skipped.append({"file": rel, "reason": str(e.args[0])})
        else:
            skipped.append({"file": rel, "reason": f"no caption ({CAPTIONS} absent and no {cap.name} beside it)"})
    if media and not entries:
        raise DatasetError(
            f"{modality} folder {str(folder)!r} has no captions: add a {CAPTIONS} with one "
            '{"file": ..., "text": ...} per line, or a .txt caption beside each file'
        )
    return entries, skipped


def _hash_int(rel: str) -> int:
    return int(hashlib.sha1(rel.encode()).hexdigest()[:12], 16)


def is_val(rel: str) -> bool:
    return _hash_int(rel) % 1000 < VAL_PERMILLE


# ------------------------------------------------------------------------------------------- tokenizers


@dataclass(kw_only=True)
class TokenizerSettings:
    image_height: int = 32
    image_width: int = 32
    image_resize: str = "fit"
    audio_codebook_size: int = 1024
    audio_fit_files: int = 32  # the codebook is fitted on at most this many training files
    caption_template: str = "{text}"  # a caption from captions.jsonl fields, e.g. "{text}; {style} style"


def _audio_cls():
    try:
        from tokenizers_mm.audio import AudioTokenizer  # noqa: PLC0415  (optional until the audio tokenizer lands)
    except ImportError as e:
        raise DatasetError(f"audio data needs tokenizers_mm.audio.AudioTokenizer, which cannot be imported ({e})") from None
    return AudioTokenizer


def _dir_fingerprint(d: Path) -> str:
    h = hashlib.sha256()
    for f in _files(d):
        h.update(f.relative_to(d).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _listing_hash(folder: Path, entries: list[Entry]) -> str:
    h = hashlib.sha256()
    for f in _files(folder):
        st = f.stat()
        h.update(f"{f.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for e in entries:
        h.update(f"{e.file}\0{e.text}\n".encode())
    return h.hexdigest()


@dataclass
class AudioCodec:
    """A fitted audio tokenizer, where it lives on disk and a fingerprint of it (part of the cache key)."""

    tokenizer: object
    dir: Path
    fingerprint: str
    # Waveforms already read (MIDI rendered) while fitting, so preparation does not render them twice.
    waveforms: dict = field(default_factory=dict, repr=False)


def load_audio_codec(directory: Path) -> AudioCodec:
    cls = _audio_cls()
    return AudioCodec(cls.load(directory), Path(directory), _dir_fingerprint(Path(directory)))


def fit_audio_codec(
    specs: list[SourceSpec], settings: TokenizerSettings, cache_root: Path, *, progress: bool = True, log=print
) -> AudioCodec:
    """Fit (or reuse) one codebook for all audio folders, on up to ``audio_fit_files`` training files."""
    paths = []
    h = hashlib.sha256(f"audio-fit-v{CACHE_FORMAT}\0{settings.audio_codebook_size}\0{settings.audio_fit_files}".encode())
    for spec in specs:
        entries, _ = list_entries(spec.path, "audio", settings.caption_template)
        h.update(f"{spec.path}\0{_listing_hash(spec.path, entries)}\n".encode())
        paths += [spec.path / e.file for e in entries if not is_val(e.file)]
    final = Path(cache_root) / f"audio-codebook-{h.hexdigest()[:16]}"
    if (final / ".complete").is_file():
        return load_audio_codec(final)
    if not paths:
        raise DatasetError("no audio files to fit the audio codebook on")
    step = max(1, len(paths) // settings.audio_fit_files)
    subset = sorted(paths, key=lambda p: _hash_int(p.name))[:: step][: settings.audio_fit_files]
    cls = _audio_cls()
    from tokenizers_mm.audio import AudioConfig  # noqa: PLC0415

    loader = cls(AudioConfig(codebook_size=settings.audio_codebook_size),
                 torch.zeros(settings.audio_codebook_size, AudioConfig().patch_dim))  # only to read files
    waves = []
    # A corrupt file must not stop the fit: read each one here and leave out those that fail.
    for p in tqdm(subset, desc="reading audio for the codebook", unit="file", disable=not progress):
        try:
            waves.append((p, loader.load_file(p)))
        except (TokenizerError, OSError, ValueError, RuntimeError) as e:
            log(f"audio codebook fit: skipping {p} ({e})")
    if not waves:
        raise DatasetError(f"none of the {len(subset)} audio files chosen to fit the codebook could be read")
    log(f"fitting the audio codebook ({settings.audio_codebook_size} codes) on {len(waves)} files ...")
    try:
        tok = cls.fit([w for _, w in waves], codebook_size=settings.audio_codebook_size)
    except TokenizerError as e:
        raise DatasetError(f"fitting the audio codebook failed: {e} (try a smaller --audio-codebook-size)") from None
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tok.save(tmp)
    (tmp / ".complete").write_text("ok")
    try:
        os.replace(tmp, final)
    except OSError:  # another process won the race: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    codec = load_audio_codec(final)
    codec.waveforms = {str(p): w for p, w in waves}
    return codec


def _audio_ids(codec: AudioCodec, path: Path) -> list[int]:
    if str(path) in codec.waveforms:
        x, sr = codec.waveforms.pop(str(path))
        ids = codec.tokenizer.encode(x, sr)
    else:
        ids = codec.tokenizer.encode_file(str(path))
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    return arr.tolist()


# ---------------------------------------------------------------------------------------- prepared source


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
        """(T, 3) position features of a *full* item's ids (text: all zero, no need to run the tracker)."""
        if self.modality == "text":
            return np.zeros((len(ids), N_FEATURES), dtype=np.int64)
        return position_features(ids)

    def crop(self, i: int, start: int, end: int, drop_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """ids, features of positions [start, end) of item i; features computed on the full item, then cropped."""
        if self.modality == "text":
            off = int(self.index[i, 0])
            ids = np.asarray(self.ids[off + start : off + end], dtype=np.int64)
            return ids, np.zeros((len(ids), N_FEATURES), dtype=np.int64)
        full = self.item(i, drop_prompt)
        return full[start:end], self.features(full)[start:end]

    def target_range(self, i: int) -> tuple[int, int]:
        return int(self.index[i, 4]), int(self.index[i, 5])

    def file(self, i: int) -> str:
        return self.manifest["items"][i]


def _cache_key(spec_path: Path, modality: str, entries: list[Entry], settings: TokenizerSettings, codec) -> str:
    relevant = {"format": CACHE_FORMAT, "folder": str(spec_path), "modality": modality}
    if modality == "image":
        relevant["image"] = [settings.image_height, settings.image_width, settings.image_resize]
    if modality == "audio":
        relevant["audio_codec"] = codec.fingerprint
    h = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    h.update(_listing_hash(spec_path, entries).encode())
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
        if not raw:
            raise TokenizerError("empty text file")
        ids = [BOS, TEXT_BEGIN, *raw, TEXT_END, EOS]
        return ids, 0, 2, len(ids) - 2
    prompt = e.text.encode("utf-8")
    if modality == "image":
        target = image_tok.encode(path)
        ids = build_sequence(prompt, "image", target, height=image_tok.height, width=image_tok.width)
    else:
        target = _audio_ids(codec, path)
        if not target:
            raise TokenizerError("no audio codes (empty or silent file)")
        ids = build_sequence(prompt, "audio", target)
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

    image_tok = ImageTokenizer(settings.image_height, settings.image_width, settings.image_resize) if modality == "image" else None
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
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
        if final.exists():  # a concurrent preparer finished first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if skipped:
        log(f"{folder}: skipped {len(skipped)} file(s) (listed in {final / 'manifest.json'}), e.g. "
            f"{skipped[0]['file']}: {skipped[0]['reason']}")
    src = PreparedSource(final, spec.weight)
    _check_usable(src, folder)
    return src


def _check_usable(src: PreparedSource, folder: Path) -> None:
    if len(src) == 0:
        sk = src.manifest["skipped"]
        raise DatasetError(
            f"{src.modality} folder {str(folder)!r} is empty after skipping {len(sk)} unreadable file(s) "
            f"(e.g. {sk[0]['file']}: {sk[0]['reason']}); see {src.dir / 'manifest.json'}"
            if sk else f"{src.modality} folder {str(folder)!r} is empty"
        )


def _settings_for(modality: str, s: TokenizerSettings, codec) -> dict:
    if modality == "image":
        return {"height": s.image_height, "width": s.image_width, "resize": s.image_resize}
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
        index[int(np.argmin([_hash_int(f) for f in files])), 3] = 1
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


# ------------------------------------------------------------------------------------------------ batches


CAPTION_SEP = b"\n\n"  # a blank line between a caption and the filler text around it


def bury_caption(caption: np.ndarray, filler: np.ndarray, where: float) -> np.ndarray:
    """Prompt ids: ``caption`` placed at fraction ``where`` of ``filler`` (0: before it, 1: after it).

    The caption is set off by a blank line on each side that touches filler; an empty caption gives the
    filler alone. Both arrays hold text-byte ids (0..255).
    """
    caption, filler = np.asarray(caption, np.int64), np.asarray(filler, np.int64)
    if caption.size == 0:
        return filler
    sep = np.frombuffer(CAPTION_SEP, np.uint8).astype(np.int64)
    cut = int(round(min(max(where, 0.0), 1.0) * len(filler)))
    head, tail = filler[:cut], filler[cut:]
    parts = [head, sep] if head.size else []
    parts.append(caption)
    if tail.size:
        parts += [sep, tail]
    return np.concatenate(parts)


def prompted_sequence(prompt: np.ndarray, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ids (T,) and position features (T, 3) of ``[BOS][TEXT_BEGIN] prompt rest``, ``rest`` starting at [TEXT_END].

    Text has no features; the media section's restart at its header, inside ``rest``, so a prompt of any
    length costs nothing to featurize.
    """
    ids = np.concatenate([[BOS, TEXT_BEGIN], prompt, rest]).astype(np.int64)
    feats = np.concatenate([np.zeros((2 + len(prompt), N_FEATURES), np.int64), position_features(rest)])
    return ids, feats


class Filler:
    """Unrelated text to bury captions in: the training documents of a prepared text source, concatenated."""

    def __init__(self, source: PreparedSource, prob: float = 0.5, split: str = "train"):
        if source.modality != "text":
            raise DatasetError(f"--filler needs a folder of .txt documents, got a {source.modality} folder")
        if not 0 < prob <= 1:
            raise DatasetError(f"--filler probability must be in (0, 1], got {prob}")
        docs = []
        for i in source.train_items if split == "train" else source.val_items:  # 'val': unseen text, for evaluation
            off = int(source.index[i, 0])
            a, b = source.target_range(int(i))
            docs.append(np.asarray(source.ids[off + a : off + b], dtype=np.int16))
        self.text = np.concatenate(docs) if docs else np.zeros(0, np.int16)  # (n_bytes,) text-byte ids
        if self.text.size < 1024:
            raise DatasetError(f"filler folder {source.manifest['folder']!r} has too little text ({self.text.size} bytes)")
        self.prob = float(prob)

    def window(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` consecutive filler bytes from a random place (wrapping round the end)."""
        start = int(rng.integers(len(self.text)))
        return self.text[(start + np.arange(n)) % len(self.text)].astype(np.int64)

    def prompt(self, rng: np.random.Generator, caption: np.ndarray, where: float, length: int) -> np.ndarray:
        """A prompt of exactly ``length`` ids (>= len(caption)): the caption buried at ``where`` in filler."""
        c = len(caption)
        if c == 0:
            return self.window(rng, length)
        f = max(0, length - c - 2 * len(CAPTION_SEP))
        p = bury_caption(caption, self.window(rng, f), where)
        extra = self.window(rng, length - len(p))  # separators not needed at an edge: more filler, away from it
        return np.concatenate([p, extra] if where < 0.5 else [extra, p])


@dataclass
class Mixture:
    """Weighted mixture of prepared sources -> equal-length crop batches, a pure function of (seed, step, micro)."""

    sources: list[PreparedSource]
    context_len: int  # L
    n_latents: int  # N
    prompt_dropout: float = 0.1
    seed: int = 0
    filler: Filler | None = None
    probs: np.ndarray = field(init=False)

    def __post_init__(self):
        w = np.asarray([s.weight if len(s.train_items) else 0.0 for s in self.sources], dtype=np.float64)
        if w.sum() <= 0:
            raise DatasetError("no training items in any data folder")
        self.probs = w / w.sum()

    def batch(self, step: int, micro: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Global batch ``rows`` x (l) tokens and (rows, l, 3) features for one micro-step; plus stats."""
        rng = np.random.default_rng([self.seed, step, micro])
        picks = []
        for _ in range(rows):
            s = int(rng.choice(len(self.sources), p=self.probs))
            src = self.sources[s]
            i = int(src.train_items[rng.integers(len(src.train_items))])
            drop = bool(src.index[i, 2] > 0 and rng.random() < self.prompt_dropout)
            picks.append((s, i, drop))
        if self.filler is not None and rng.random() < self.filler.prob:
            if all(self.sources[s].modality != "text" for s, _, _ in picks):
                return self._buried_batch(rng, picks)
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
        features = torch.from_numpy(np.stack(feats))  # (rows, l, 3)
        stats = {"seq_len": length, "dropped_prompts": sum(d for _, _, d in picks)}
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
            where = float(rng.choice([0.0, 1.0, rng.random()]))
            rows.append((caption, rest, k, where))
        need = max(2 + len(c) + k for c, _, k, _ in rows)  # no filler at all
        length = int(rng.integers(need, max(need, self.context_len + 1) + 1))
        toks, feats, fill = [], [], []
        for caption, rest, k, where in rows:
            prompt = self.filler.prompt(rng, caption, where, length - 2 - k)
            ids, feat = prompted_sequence(prompt, rest[:k])  # (length,), (length, 3)
            toks.append(ids)
            feats.append(feat)
            fill.append(len(prompt) - len(caption))
        tokens = torch.from_numpy(np.stack(toks))  # (rows, l)
        features = torch.from_numpy(np.stack(feats))  # (rows, l, 3)
        stats = {"seq_len": length, "dropped_prompts": sum(d for _, _, d in picks), "filler_bytes": fill}
        return tokens, features, stats
