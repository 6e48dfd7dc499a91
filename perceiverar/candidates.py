"""Best of k: draw several candidates per result and keep the one the model finds likeliest given the prompt.

A candidate's score is log p(sample | prompt) under the model itself: ``perceiverar.generation.sample_log_prob``
of each id (from the conditional logits, unguided, at temperature 1, over the ids the constraint allows), summed
while the ids are sampled, so scoring costs nothing beyond the extra candidates. The idea: a draw that wandered
off (a stray colour that the following pixels build on, a chorale that left its key) has a low likelihood. As
DALL-E reranked its samples (with CLIP), this reranks with the generator's own judgement.

Measured (``python -m benchmarks.rerank``, which compares selection rules on the same draws; CPU, 2026-12-01): on
the bundled emoji checkpoint, over six runs of 40 held-out captions x 2 groups of four (three caption sets, four
sampling settings), the likeliest of four was in the caption's category 42.5% of the time against 41.9% for any
one draw: it helped at temperature 0.8 with guidance 3 (34 of 80 against 38.4%) but not at the checkpoint's
default (temperature 1, guidance 2), and it kept more blank images (6.9% against 2.6%: a flat image is likely).
The pointwise mutual information log p(x | prompt) - log p(x | no prompt) did worse (39.6%): it prefers busy,
noisy images, which the unconditional model finds unlikely. On the bach checkpoint the likeliest of four clips
followed the caption's key no better (0.62 of the real recordings' rate against 0.63, mode 0.72 against 0.78;
140 clips). So reranking is offered, and off by default.
"""

from __future__ import annotations

import torch


class Candidates:
    """``results`` groups of ``per_result`` rows; rows [i * per_result, (i + 1) * per_result) are result i's."""

    def __init__(self, results: int, per_result: int, device: torch.device | str = "cpu"):
        if int(results) < 1 or int(per_result) < 1:
            raise ValueError(f"results and per_result must be >= 1, got {results} and {per_result}")
        self.results, self.per_result = int(results), int(per_result)
        # (rows,) float32, filled in place by generate(log_probs=...); None when there is nothing to choose
        self.scores = torch.zeros(self.rows, device=device) if self.per_result > 1 else None

    @property
    def rows(self) -> int:
        return self.results * self.per_result

    def chosen(self) -> torch.Tensor:
        """(results,) int64 on the CPU: the row kept for each result (the highest score of its group so far)."""
        first = torch.arange(self.results) * self.per_result
        if self.scores is None:
            return first
        return first + self.scores.view(self.results, self.per_result).argmax(dim=1).cpu()

    def best(self, rows: torch.Tensor) -> torch.Tensor:
        """(rows, ...) -> (results, ...): each result's best candidate so far (previews may see the lead change)."""
        if rows.shape[0] != self.rows:
            raise ValueError(f"expected {self.rows} rows, got {rows.shape[0]}")
        return rows if self.scores is None else rows[self.chosen().to(rows.device)]
