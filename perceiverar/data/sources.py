"""Data folders: what ``--data`` names, what each folder holds, its items and their train/val split.

Folders
-------
- image: PNG/JPEG/GIF/BMP/WebP/TIFF files with a ``captions.jsonl`` (``{"file": "rel/path.png", "text": ...}``
  per line, the format of ``../shared/data/emoji``) or a ``.txt`` caption beside each file (``a.png`` + ``a.txt``).
- audio: WAV/FLAC/OGG/MP3 files, or MIDI files (rendered with fluidsynth by the audio tokenizer), captioned the
  same two ways (``../shared/data/bach``).
- text: plain ``.txt`` files; each file is one long document, laid out ``[BOS][TEXT_BEGIN] bytes [TEXT_END][EOS]``
  (``../shared/data/shakespeare``).

The modality is detected from the file types (media files win over ``.txt``, which may be captions) or forced.

Validation split: deterministic by a hash of the item's relative file name (~5 %). A folder too small to hold a
val item that way gives its lowest-hash item to val; a text folder with fewer than 2 documents holds out the last
5 % of each document instead (a separate index row over the same ids; see ``perceiverar.data.cache``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# The version of every on-disk cache (token caches and audio codebooks): bump it to invalidate them all.
CACHE_FORMAT = 1
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3", ".mid", ".midi"}
TEXT_EXTS = {".txt"}
CAPTIONS = "captions.jsonl"
VAL_PERMILLE = 50  # ~5 % held out


class DatasetError(ValueError):
    """A data folder that cannot be used (missing, no captions, nothing readable); the message says why."""


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


def list_files(folder: Path) -> list[Path]:
    """Every file below ``folder``, sorted, skipping hidden files and folders."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return out


def detect_modality(folder: Path) -> str:
    """'image', 'audio' or 'text' from the file types in ``folder`` (media files win over .txt captions)."""
    files = list_files(folder)
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


def longest_caption(folder: Path, modality: str, caption_template: str = "{text}") -> int:
    """Prompt tokens of the folder's longest caption as training writes it (one token per UTF-8 byte); 0 for a
    folder of text documents, which have no captions."""
    entries, _ = list_entries(Path(folder), modality, caption_template)
    return max((len(e.text.encode("utf-8")) for e in entries if e.text), default=0)


def list_entries(folder: Path, modality: str, caption_template: str = "{text}") -> tuple[list[Entry], list[dict]]:
    """The folder's items and the files skipped while listing (missing, uncaptioned, bad captions lines).

    ``caption_template`` builds each caption from its captions.jsonl fields (a caption file's text is ``{text}``).
    """
    skipped: list[dict] = []
    files = list_files(folder)
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
            outside = _outside(rel)
            if outside:
                skipped.append({"file": rel, "reason": outside})
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


def _outside(rel: str) -> str | None:
    """Why a captions.jsonl file name may not be read, or None: only the folder's own (listed, non-hidden) files
    are, since only they are in the cache key (so a change to any file read re-tokenizes the folder)."""
    parts = PurePosixPath(rel).parts
    if not rel or PurePosixPath(rel).is_absolute() or Path(rel).is_absolute() or "\\" in rel:
        return "the file must be a relative path inside the data folder (absolute paths are not read)"
    if ".." in parts:
        return "the file must be inside the data folder ('..' is not followed)"
    if any(x.startswith(".") for x in parts):
        return "hidden files and folders are not read"
    return None


def hash_int(rel: str) -> int:
    return int(hashlib.sha1(rel.encode()).hexdigest()[:12], 16)


def is_val(rel: str) -> bool:
    return hash_int(rel) % 1000 < VAL_PERMILLE


@dataclass(kw_only=True)
class TokenizerSettings:
    image_height: int = 32
    image_width: int = 32
    image_resize: str = "fit"
    image_mode: str = "subpixel"  # or "palette": one colour token per pixel (tokenizers_mm.image)
    image_palette: tuple | None = None  # palette mode: K x 3 RGB colours as nested tuples (hashable)
    audio_codebook_size: int = 1024
    audio_fit_files: int = 32  # the codebook is fitted on at most this many training files
    # ((name, value), ...) passed to AudioTokenizer.fit: AudioConfig fields (n_mels, hop_length, patch_frames, ...)
    # or the fit's own (max_frames, iters); empty = its defaults
    audio_options: tuple = ()
    audio_mode: str = "codes"  # or "chords": a chord label before every CHORD_BLOCK codes (tokenizers_mm.chords)
    caption_template: str = "{text}"  # a caption from captions.jsonl fields, e.g. "{text}; {style} style"


# file -> its content digest, for as long as the file's inode, size, mtime and ctime stay the same (any write changes
# the ctime, which cannot be set back): a run keys its token cache, palette fit and codebook fit by the same folder
# (listing_hash), and reads each file once for all three
_DIGESTS: dict[tuple, bytes] = {}


def _file_digest(f: Path) -> bytes:
    st = f.stat()
    stamp = (str(f), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if stamp not in _DIGESTS:
        content = hashlib.blake2b()
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                content.update(chunk)
        _DIGESTS[stamp] = content.digest()
    return _DIGESTS[stamp]


def listing_hash(folder: Path, entries: list[Entry]) -> str:
    """A hash of the folder's files (relative names and contents) and its captions: what the token cache, the
    palette fit and the audio codebook fit are keyed by. Contents rather than mtimes, so a re-copied or re-checked-out
    folder (new mtimes, same bytes) finds its caches, and an edited file (even within the same second, same size)
    never reuses a stale one. The price: every file is read once per process to hash it (the 38 MB emoji folder,
    7,000+ files: 0.3 s on the 2-core CPU)."""
    h = hashlib.sha256()
    for f in list_files(folder):
        h.update(f"{f.relative_to(folder).as_posix()}\0{f.stat().st_size}\0".encode())
        h.update(_file_digest(f))
        h.update(b"\n")
    for e in entries:
        h.update(f"{e.file}\0{e.text}\n".encode())
    return h.hexdigest()
