-- wrk -s bench/post.lua: POSTs the file $BODY with content-type $CT (default application/octet-stream).
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("CT") or "application/octet-stream"
