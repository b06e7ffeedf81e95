-- list_page_walk: GET /api/users?limit=100&offset=N, every request another
-- offset (steps of 1,009 around every offset a full page starts at, deep
-- and shallow mixed), so no request finds its page among the ones the
-- server keeps in memory (about 200 pages of 100 fit in its 4 MiB; the walk
-- has BENCH_USERS - 99 of them): the price of a page rendered afresh.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local users = tonumber(bench.env("BENCH_USERS"))
local token = "Bearer " .. bench.env("BENCH_ACCESS")
local starts = users - 99
local offset = 0

function request()
  local path = "/api/users?limit=100&offset=" .. offset
  offset = (offset + 1009) % starts
  return wrk.format("GET", path, { ["Authorization"] = token })
end
