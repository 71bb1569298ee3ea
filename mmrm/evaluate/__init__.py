"""Measuring reward models, one module each: :mod:`~mmrm.evaluate.metrics` (pairwise accuracy,
margins, best-of-N quality, paired bootstrap CIs), :mod:`~mmrm.evaluate.matrix` (the
cross-distribution matrix), :mod:`~mmrm.evaluate.diagnosis` (the shortcut diagnosis of a
preference data set and of a trained RM) and :mod:`~mmrm.evaluate.plots`. Models are loaded
and run through :mod:`mmrm.inference`.

Definitions used throughout (also in the README):

* **pairwise accuracy** — share of pairs whose chosen response gets the higher reward; a tie
  counts one half (and the number of ties is reported beside it).
* **shortcut-failure subset** — the pairs a text-only proxy RM gets wrong (it gives the rejected
  response a reward at least as high: loss ``>= log 2``). These are the pairs whose text alone
  points the wrong way, so only the image can decide them (the paper, Sec. 3).
* **Shortcut-Failure Degradation (SFD)** — a multimodal RM's accuracy on the pairs the proxy
  gets right minus its accuracy on the shortcut-failure subset, in accuracy points (0–1).
  An RM that uses the image scores both subsets alike (SFD near 0); an RM that learned the
  text shortcut is right where the text is right and wrong where it is wrong (SFD near 1).
"""

