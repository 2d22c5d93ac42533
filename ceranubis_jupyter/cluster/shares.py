"""How a dispatch splits waiting tasks over the nodes with free credit."""

from __future__ import annotations

import heapq

from .link import NodeLink


def fair_shares(links: list[NodeLink], tasks: int) -> list[tuple[NodeLink, int]]:
    """Split ``tasks`` over links by water-filling: each next task to the least loaded link.

    Load is tasks in flight per worker, so a few long tasks spread over every host instead
    of piling onto whichever host happens to come first.
    """
    if len(links) == 1:
        return [(links[0], min(links[0].free, tasks))]
    shares = {id(link): 0 for link in links}
    heap = [(link.load, index) for index, link in enumerate(links)]
    heapq.heapify(heap)
    while heap and tasks > 0:
        _, index = heapq.heappop(heap)
        link = links[index]
        shares[id(link)] += 1
        tasks -= 1
        if shares[id(link)] < link.free:
            heapq.heappush(heap, (link.load_with(shares[id(link)]), index))
    return [(link, shares[id(link)]) for link in links if shares[id(link)]]
