"""Which replica holds a run: a consistent-hash ring over replica indices, written for nginx.

nginx places a call by its `gradserve-run` header with `split_clients`, which hashes the header
with MurmurHash2 and picks the entry whose share of the 32-bit hash space holds it. The entries
are a ring: every replica owns POINTS_PER_REPLICA points drawn from its index alone, and a hash
belongs to the first point at or after it. So the placement depends on the run's name and the
number of replicas only, never on ports (a restarted set finds each run's checkpoints where it
left them), and going from N to N + 1 replicas moves only the runs that the new replica takes.
`replica_for` is the same arithmetic in Python, for tests and for operators asking where a run is.
The default run (no header) is always replica 0.
"""

from __future__ import annotations

from dataclasses import dataclass

# split_clients' resolution: percentages with two decimals, 10,000 steps of the hash space.
STEPS = 10_000
POINTS_PER_REPLICA = 64
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur_hash2(data: bytes) -> int:
    """nginx's ngx_murmur_hash2 (MurmurHash2, seed 0), the hash split_clients uses."""
    h = len(data) & _MASK
    whole = len(data) - len(data) % 4
    for offset in range(0, whole, 4):
        k = int.from_bytes(data[offset : offset + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[whole:]
    if tail:
        for index in reversed(range(len(tail))):
            h ^= tail[index] << (8 * index)
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@dataclass(frozen=True)
class Share:
    """One split_clients entry: `steps` ten-thousandths of the hash space, or the rest (0)."""

    steps: int
    replica: int


def ring(count: int) -> list[Share]:
    """The split_clients entries for `count` replicas, in order; the last one takes the rest."""
    points: dict[int, int] = {}
    for replica in range(count):
        for point in range(POINTS_PER_REPLICA):
            step = murmur_hash2(f"replica-{replica}-{point}".encode()) * STEPS >> 32
            # A point another replica already holds stays with the lower index: adding a
            # replica never takes a point from the ones before it.
            if step > 0:
                points.setdefault(step, replica)
    shares: list[Share] = []
    previous = 0
    for step in sorted(points):
        owner = points[step]
        if shares and shares[-1].replica == owner:
            shares[-1] = Share(shares[-1].steps + step - previous, owner)
        else:
            shares.append(Share(step - previous, owner))
        previous = step
    # Past the last point the ring wraps to the owner of the first.
    shares.append(Share(0, shares[0].replica if shares else 0))
    return shares


def replica_for(run: str, count: int) -> int:
    """The replica nginx sends `run`'s calls to, with split_clients' own integer arithmetic."""
    if not run:
        return 0
    value = murmur_hash2(run.encode())
    bound = 0
    shares = ring(count)
    for share in shares[:-1]:
        bound += share.steps * _MASK // STEPS
        if value < bound:
            return share.replica
    return shares[-1].replica


def percent(steps: int) -> str:
    """A share as split_clients writes it: 12.34%."""
    return f"{steps // 100}.{steps % 100:02d}%"
