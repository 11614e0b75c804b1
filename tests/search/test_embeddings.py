"""The MiniLM bi-encoder: offline load, sha256 verified (a tampered copy is refused), disk cache."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from mlsd.search.embeddings import (
    MINILM_SHA256,
    ModelIntegrityError,
    default_model_dir,
    embed_products,
    load_encoder,
    verify_model,
)


@pytest.fixture(scope="session")
def encoder():
    return load_encoder()  # loaded once per test session


def test_installed_weights_verify():
    verify_model(default_model_dir(), MINILM_SHA256)


def test_tampered_copy_refused(tmp_path):
    src = default_model_dir()
    dst = tmp_path / "model"
    dst.mkdir()
    for item in src.iterdir():
        if item.name != "model.safetensors":
            target = dst / item.name
            (shutil.copytree if item.is_dir() else shutil.copy)(item, target)
    # a same-size copy with one byte flipped: the hash, not the size, must catch it
    data = bytearray((src / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dst / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="refusing"):
        load_encoder(dst)
    (dst / "model.safetensors").unlink()
    with pytest.raises(ModelIntegrityError, match="not found"):
        verify_model(dst)


@pytest.mark.slow  # the first user of the session fixture pays the model load (~5-15 s)
def test_encoder_offline_and_semantic(encoder):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    v = encoder.encode(["wireless earbuds", "bluetooth headphones", "garden hose"])
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert load_encoder() is encoder


@pytest.mark.slow
def test_product_embeddings_cached_by_fingerprint(encoder, tmp_path):
    products = pd.DataFrame({"product_id": [1, 2], "title": ["oak desk", "leather sofa"]})
    first = embed_products(products, encoder, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("minilm-*.npy"))
    assert len(files) == 1
    np.save(files[0], first * 0 + 0.5)  # prove the second call reads the cache, not the model
    assert (embed_products(products, encoder, cache_dir=tmp_path, progress=False) == 0.5).all()
    changed = products.assign(title=["oak desk", "fabric sofa"])
    embed_products(changed, encoder, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("minilm-*.npy"))) == 2  # a changed catalog gets its own cache entry


def test_loading_the_encoder_keeps_library_chatter_out_of_the_logs() -> None:
    """transformers prints a "Loading weights" bar and load reports on every start: not in our stderr."""
    import subprocess
    import sys

    code = "from mlsd.search.embeddings import load_encoder; load_encoder().encode(['barn door'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "it/s" not in done.stderr, done.stderr


def test_static_word_encoder_is_the_normalised_mean_of_term_vectors(encoder):
    import pickle

    from mlsd.search.embeddings import StaticWordEncoder
    from mlsd.search.text import analyze

    titles = ["Sonix Wireless Headphones, Black", "Casara Modern Lamps, Red", "Sonix Pro Speaker, red"]
    static = StaticWordEncoder(encoder).fit(titles)
    assert static.terms_ == list(dict.fromkeys(t for title in titles for t in analyze(title)))
    np.testing.assert_allclose(static.term_vectors_, encoder.encode(static.terms_), rtol=1e-5, atol=1e-6)
    texts = ["red headphone lamps", "sonix unknownword", "nothing known here", "red red lamp"]
    got = static.encode(texts)
    for text, row in zip(texts, got, strict=True):
        known = [static.vocab_[t] for t in analyze(text) if t in static.vocab_]
        if not known:
            assert not row.any()  # no dense match rather than a made-up vector
            continue
        mean = static.term_vectors_[known].sum(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    # What a shard build task receives: terms and vectors, not the transformer; it encodes the same.
    shipped = pickle.loads(pickle.dumps(static))
    assert shipped.word_encoder is None
    np.testing.assert_array_equal(shipped.encode(texts), got)
