-- get_user: GET /api/users/{id} for ids spread over the seeded users, with
-- one valid access token (any user may read any user).
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local users = tonumber(bench.env("BENCH_USERS"))
local token = bench.env("BENCH_ACCESS")
local n = 0

wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer " .. token

function request()
  n = n + 1
  return wrk.format(nil, "/api/users/" .. ((n * 7919) % users + 1))
end
