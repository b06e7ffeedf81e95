-- Ceiling `hello`: GET / on examples/hello.rs (a constant small JSON).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

wrk.method = "GET"
wrk.path = "/"
