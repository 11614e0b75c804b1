"""Candidate generation: cheap, batch-first sources whose union the ranker re-orders.

A package: :mod:`~mlsd.recsys.candidates.base` (the protocol every source follows, the history
index, the batch helpers), one module per source family (:mod:`~mlsd.recsys.candidates.als`,
:mod:`~mlsd.recsys.candidates.item_item`, :mod:`~mlsd.recsys.candidates.blend`,
:mod:`~mlsd.recsys.candidates.content`, :mod:`~mlsd.recsys.candidates.popularity`) and
:mod:`~mlsd.recsys.candidates.generator` (the union). This module is the package's public API.
``tests/recsys/test_candidates.py`` runs one contract over all seven sources.

Every source follows one protocol::

    source.fit(dataset_or_interactions, users=None, items=None) -> source
    source.candidates(user_ids, n, exclude=None) -> (item_idx (u, n) int64, scores (u, n) float32)
    source.score(user_ids, item_idx) -> scores (u, m)   # the source's score for given pairs (a feature)
    source.score_dense(user_ids) -> scores (u, n_items)  # every item (NaN rows: unknown users)

``user_ids`` are raw ids; ``item_idx`` are dense indices into ``source.items_`` (an
:class:`~mlsd.recsys.data.IdMap`). ``exclude`` is a sparse matrix with one row per requested user
and one column per item (non-zero = never return it), typically the titles the user already saw.
Rows are padded with item -1 / score -inf when a source has fewer than ``n`` items for a user
(unknown users get an all-padding row from the personalised sources).

Sources: :class:`ALSCandidates` (implicit ALS + FAISS inner product), :class:`EASECandidates`
(closed-form item-item model, strong on small catalogues), :class:`RP3BetaCandidates` (a random walk
with a popularity penalty), :class:`SequentialEASECandidates` (EASE on co-occurrence within a few
positions of a user's time-ordered history), :class:`BlendCandidates` (z-scored linear ensemble of
those), :class:`ContentCandidates` (TF-IDF over metadata; also from seed items for cold start),
:class:`PopularityCandidates` (popular, trending, new releases). :class:`CandidateGenerator` unions them into one long frame with per-source flags,
ranks and scores.
"""

from mlsd.recsys.candidates.als import ALSCandidates
from mlsd.recsys.candidates.base import CandidateSource, History, as_user_array, check_n, top_n_dense
from mlsd.recsys.candidates.blend import BlendCandidates
from mlsd.recsys.candidates.content import ContentCandidates, item_documents
from mlsd.recsys.candidates.generator import (
    DEFAULT_SOURCES,
    EVAL_SOURCE_SETTINGS,
    EVAL_SOURCES,
    CandidateGenerator,
    default_source,
)
from mlsd.recsys.candidates.item_item import EASECandidates, RP3BetaCandidates, SequentialEASECandidates
from mlsd.recsys.candidates.popularity import PopularityCandidates

__all__ = [
    "DEFAULT_SOURCES",
    "EVAL_SOURCES",
    "EVAL_SOURCE_SETTINGS",
    "ALSCandidates",
    "BlendCandidates",
    "CandidateGenerator",
    "CandidateSource",
    "ContentCandidates",
    "EASECandidates",
    "History",
    "PopularityCandidates",
    "RP3BetaCandidates",
    "SequentialEASECandidates",
    "as_user_array",
    "check_n",
    "default_source",
    "item_documents",
    "top_n_dense",
]
