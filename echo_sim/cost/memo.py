"""One rule for the cost model's bounded memos: the prices and shapes a simulation asks for again
and again (a verify shape list per batch size, a draft's token list, the graph rule of one V)."""

from __future__ import annotations


def remembered(cache: dict, key, compute, limit: int):
    """cache[key], computed by compute() when missing and kept (the cache emptied once it holds
    `limit` entries); a None answer (not computable yet) is not kept."""
    value = cache.get(key)
    if value is None:
        value = compute()
        if value is not None:
            if len(cache) >= limit:
                cache.clear()
            cache[key] = value
    return value
