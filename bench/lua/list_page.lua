-- list_page: GET /api/users?limit=100&offset=N at one fixed offset
-- (run.sh runs it once per offset, deep ones included).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

wrk.method = "GET"
wrk.path = "/api/users?limit=100&offset=" .. bench.env("BENCH_OFFSET")
wrk.headers["Authorization"] = "Bearer " .. bench.env("BENCH_ACCESS")
