-- update: PUT /api/users/{id} by the owner, cycling over several users
-- (one token each) and the three statuses; username and email unchanged.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")

local owners = bench.pairs_list(bench.env("BENCH_OWNERS"))
local statuses = { "online", "busy", "offline" }
local n = 0

-- wrk.format() uses the headers given *instead of* wrk.headers, so each
-- request carries its own full set.
wrk.method = "PUT"

function request()
  n = n + 1
  local owner = owners[n % #owners + 1]
  local body = string.format(
    '{"username":"user%d","email":"user%d@example.com","status":"%s"}',
    owner.id, owner.id, statuses[n % 3 + 1])
  return wrk.format(nil, "/api/users/" .. owner.id,
                    { ["Authorization"] = "Bearer " .. owner.token,
                      ["Content-Type"] = "application/json" }, body)
end
