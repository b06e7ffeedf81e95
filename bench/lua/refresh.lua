-- refresh: POST /api/token/refresh with one valid refresh token (rotation
-- is off by default, so the same token stays valid).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

wrk.method = "POST"
wrk.path = "/api/token/refresh"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"refresh":"' .. bench.env("BENCH_REFRESH") .. '"}'
