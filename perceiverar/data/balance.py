"""Balanced sampling: draw training items less often the more common their group is (``--balance FIELD[:POWER]``).

The emoji set is 60% "People & Body" (4,372 of 7,246 images: every gesture in five skin tones), while a user's
prompts, and the classifier score that measures them, spread over every category; "Activities" has 158 images,
"Food & Drink" 252. Drawn uniformly, each food emoji is seen as often as each person, but the model spends most
of its steps on people. With ``--balance category:0.5`` an item of a group of ``n`` training items is drawn with
probability proportional to ``n ** -0.5``: a group's share of the draws goes from ``n / total`` to
``sqrt(n) / sum(sqrt(n_g))`` (People 60% -> 30%, Food 3.5% -> 7.3%). POWER 1 gives every group the same share
(a group of 5 images then gets as many draws as one of 4,000: use it only with groups of similar size); 0 is
uniform.

The groups come from a field of the folder's ``captions.jsonl`` (``{"file": ..., "text": ..., "category": ...}``);
items without the field (or folders without the file: text, ``.txt`` captions) form one group of their own.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from perceiverar.data.cache import PreparedSource
from perceiverar.data.sources import CAPTIONS


def parse_balance(arg: str) -> tuple[str, float]:
    """``FIELD`` or ``FIELD:POWER`` (default power 0.5) -> (field, power); ValueError names the problem."""
    field, _, power = arg.partition(":")
    if not field:
        raise ValueError(f"--balance {arg!r}: expected FIELD[:POWER], e.g. category:0.5")
    try:
        p = float(power) if power else 0.5
    except ValueError:
        raise ValueError(f"--balance {arg!r}: POWER must be a number, e.g. category:0.5") from None
    if not 0 <= p <= 1:
        raise ValueError(f"--balance {arg!r}: POWER must be in [0, 1] (0: uniform, 1: every group the same share)")
    return field, p


def item_groups(source: PreparedSource, field: str) -> list[str | None]:
    """Each item's value of ``field`` in its folder's captions.jsonl (None where the item or the file has none)."""
    path = Path(source.manifest["folder"]) / CAPTIONS
    values: dict[str, str] = {}
    if path.is_file():  # read as sources.list_entries reads it: a bad line was skipped there (no item came of it)
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and field in rec and "file" in rec:
                values[str(rec["file"])] = str(rec[field])
    return [values.get(source.file(int(i))) for i in range(len(source))]


def balanced_probs(source: PreparedSource, field: str, power: float) -> tuple[np.ndarray, dict[str, float]]:
    """Draw probabilities of ``source.train_items`` (they sum to 1) and each group's share of the draws."""
    groups = item_groups(source, field)
    train = [groups[int(i)] for i in source.train_items]
    counts = Counter(train)
    w = np.asarray([counts[g] ** -power for g in train], dtype=np.float64)
    p = w / w.sum()
    shares: dict[str, float] = {}
    for g, pi in zip(train, p):
        key = "(none)" if g is None else g
        shares[key] = shares.get(key, 0.0) + float(pi)
    return p, dict(sorted(shares.items(), key=lambda kv: -kv[1]))
