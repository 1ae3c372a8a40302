"""Reads the embedding cache `coe router train` fills (~/.cache/coe/router-embeddings): records of
an 8-byte FNV-1a hash of the text followed by the 384 little-endian f32 values of its embedding."""
import os

import numpy as np

DIM = 384
CACHE = "~/.cache/coe/router-embeddings/all-minilm-l6-v2-53aa51172d142c89.bin"


def fnv(s):
    """FNV-1a 64 of the text's UTF-8 bytes, the cache's key."""
    h = 0xcbf29ce484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def load_cache(p=CACHE):
    """(hash -> row index, embeddings as an [n, DIM] array)."""
    raw = np.fromfile(os.path.expanduser(p), dtype=np.uint8)
    rec = 8 + 4 * DIM
    n = len(raw) // rec
    raw = raw[:n * rec].reshape(n, rec)
    keys = raw[:, :8].copy().view("<u8")[:, 0]
    vecs = raw[:, 8:].copy().view("<f4")
    return dict(zip(keys.tolist(), range(n))), vecs
