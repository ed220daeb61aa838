-- bench/dispatcher_post.lua: wrk script of bench/dispatcher.
--
--   wrk -t2 -c64 -d10s --latency -s bench/dispatcher_post.lua URL -- TOKENS_FILE [MESSAGE]
--
-- POSTs {"message": MESSAGE} (default "What is TON token?") as JSON to URL
-- with `Authorization: Bearer <token>`, cycling through the tokens of
-- TOKENS_FILE (one per line: one per user, so a per-user rate limit is not
-- what is measured).  The requests are formatted once, in init; each wrk
-- thread starts at a different token.  Nothing is checked here: wrk counts
-- non-2xx answers, and bench/dispatcher compares the 202s with the jobs in
-- the queue.

local threads = 0
local reqs = {}
local n = 0
local i = 0

function setup(thread)
    thread:set("offset", threads)
    threads = threads + 1
end

function init(args)
    local path = args[1]
    if path == nil then
        error("usage: wrk ... -s dispatcher_post.lua URL -- TOKENS_FILE [MESSAGE]")
    end
    local message = args[2] or "What is TON token?"
    local body = '{"message":"' .. message:gsub('[\\"]', '\\%0') .. '"}'
    for tok in io.lines(path) do
        if tok ~= "" then
            n = n + 1
            reqs[n] = wrk.format("POST", nil, {
                ["Authorization"] = "Bearer " .. tok,
                ["Content-Type"] = "application/json",
            }, body)
        end
    end
    if n == 0 then
        error("no tokens in " .. path)
    end
    i = (offset or 0) * 7 % n
end

function request()
    i = i % n + 1
    return reqs[i]
end
