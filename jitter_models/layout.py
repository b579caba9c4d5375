"""Where ranks live: the one definition of node membership, shared by the draws (which
ranks share a ``scope = "node"`` delay) and the model (how many streams a site's max is
over), so the two cannot disagree.

Ranks fill nodes in blocks of ``ranks_per_node`` consecutive ranks: ranks 0..K-1 on node 0,
K..2K-1 on node 1, and so on. A multi-node sweep places a point of N ranks on
ceil(N / K) nodes exactly so (torchrun's global rank = node rank x K + local rank), and
on one host the same blocks stand in for the nodes the point would span.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def node_of(rank: int, ranks_per_node: int) -> int:
    """The node of ``rank`` when nodes hold ``ranks_per_node`` consecutive ranks each."""
    for name, v, low in (("rank", rank, 0), ("ranks_per_node", ranks_per_node, 1)):
        if not _is_int(v) or v < low:
            raise ValueError(f"{name}: must be an integer >= {low}, got {v!r}")
    return int(rank) // int(ranks_per_node)


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))
