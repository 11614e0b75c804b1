"""Candidate generation: cheap, batch-first sources whose union the ranker re-orders.

A package: :mod:`~mlsd.recsys.candidates.base` (the protocol every source follows, the history
index, the batch helpers), one module per source family (:mod:`~mlsd.recsys.candidates.als`,
:mod:`~mlsd.recsys.candidates.item_item`, :mod:`~mlsd.recsys.candidates.blend`,
:mod:`~mlsd.recsys.candidates.content`, :mod:`~mlsd.recsys.candidates.popularity`) and
:mod:`~mlsd.recsys.candidates.generator` (the union). This module is the package's public API.
``tests/recsys/test_candidates.py`` runs one contract over all seven sources.

Every source follows one batch-first protocol (:class:`~mlsd.recsys.candidates.base.CandidateSource`:
``fit``, ``candidates``, ``score``, ``score_dense``; raw user ids in, dense item indices out, padding
with item -1 / score -inf), documented in :mod:`~mlsd.recsys.candidates.base`.

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
