"""Bounded tallies (supervise_smtp/logs/topk.py): exact while small, bounded and honest when not."""

from __future__ import annotations

import random

from supervise_smtp.logs.topk import OTHER, Capped, TopK


def test_topk_is_exact_while_keys_fit():
    """Up to 2 x capacity distinct keys: true counts, error 0, first and last seen."""
    sketch = TopK(capacity=5)
    for i, key in enumerate("abacabadab"):
        sketch.add(key, when=float(i), details={"helo_name": f"h{i}"})
    assert sketch.exact
    assert [(k, e.count, e.error) for k, e in sketch.top(3)] == [
        ("a", 5, 0), ("b", 3, 0), ("c", 1, 0)]  # a tie goes by key
    a = sketch.entries["a"]
    assert (a.first, a.last, a.details) == (0.0, 8.0, {"helo_name": "h8"})


def test_topk_bounds_memory_and_keeps_heavy_hitters():
    """100,000 one-off keys and three heavy ones: at most 2 x capacity kept, heavy ones exact."""
    rng = random.Random(5)
    stream = [f"10.0.{i >> 8 & 255}.{i & 255}/{i}" for i in range(100_000)]
    heavy = {"192.0.2.7": 3000, "198.51.100.9": 1500, "203.0.113.5": 900}
    for key, n in heavy.items():
        stream += [key] * n
    rng.shuffle(stream)
    sketch = TopK(capacity=200)
    largest = 0
    for key in stream:
        sketch.add(key)
        largest = max(largest, len(sketch))
    assert largest <= 400 and not sketch.exact
    top = sketch.top(3)
    assert [k for k, _ in top] == list(heavy)
    for key, entry in top:
        # an upper bound, and count - error a lower bound, of the true count
        assert entry.count - entry.error <= heavy[key] <= entry.count
    assert sketch.total == len(stream)
    assert sketch.floor <= len(stream) // 200  # the error bound of space-saving


def test_topk_counts_are_upper_bounds_for_every_kept_key():
    """Whatever the stream, each kept key's true count lies in [count - error, count]."""
    rng = random.Random(9)
    stream = [str(int(rng.paretovariate(1.2))) for _ in range(20_000)]
    truth: dict[str, int] = {}
    for key in stream:
        truth[key] = truth.get(key, 0) + 1
    sketch = TopK(capacity=20)
    for key in stream:
        sketch.add(key)
    for key, entry in sketch.entries.items():
        assert entry.count - entry.error <= truth[key] <= entry.count


def test_capped_counter_lumps_the_rest():
    """Keys past the limit count under (other); the total stays right."""
    counter = Capped(limit=3)
    for key in ["a", "b", "a", "c", "d", "e", "a"]:
        counter.add(key)
    assert counter.most_common() == [("a", 3), (OTHER, 2), ("b", 1), ("c", 1)]
    assert counter.total() == 7
