-- wrk -s bench/oip/infer.lua: POSTs the file $BODY, an Open Inference Protocol REST request with
-- the binary data extension (JSON header + raw tensors, made by bench/oip/bodies.py), with
-- Inference-Header-Content-Length: $HLEN (the JSON header's length).
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = assert(os.getenv("HLEN"), "set HLEN")
