-- list_1k: GET /api/users (every user; 1,000 seeded).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

wrk.method = "GET"
wrk.path = "/api/users"
wrk.headers["Authorization"] = "Bearer " .. bench.env("BENCH_ACCESS")
