"""balancer/discovery.py's pure part: the table served from a declared one and DNS answers."""

from __future__ import annotations

from types import MappingProxyType

from balancer.discovery import HOLD, Served, discovered_table
from balancer.table import AliasEntry, Endpoint, HealthSettings, NodeEntry, RoutingTable

LISTED = NodeEntry((Endpoint("web-0", "127.0.0.1", 9000),), 1, HealthSettings())
FOUND = NodeEntry((), 1, HealthSettings(), discover="tasks.api:8080")


def declared(generation: int = 7) -> RoutingTable:
    return RoutingTable(
        generation,
        MappingProxyType({"web": LISTED, "api": FOUND}),
        MappingProxyType({"site": AliasEntry((("api", 100),))}),
    )


def endpoints(table: RoutingTable, node: str) -> list[str]:
    return [e.instance for e in table.nodes[node].endpoints]


def never(_: Endpoint) -> bool:
    return False


def test_answers_become_endpoints_named_by_address_and_the_rest_is_kept() -> None:
    served = Served()

    table = discovered_table(
        declared(), {"tasks.api:8080": ["10.0.1.4", "10.0.1.3"]}, served, 0.0, never
    )

    assert endpoints(table, "api") == ["10.0.1.4:8080", "10.0.1.3:8080"]
    assert table.nodes["api"].endpoints[0] == Endpoint("10.0.1.4:8080", "10.0.1.4", 8080)
    assert table.nodes["web"] is LISTED
    assert table.generation == 7 and table.aliases == declared().aliases
    assert table.nodes["api"].discover == "tasks.api:8080"


def test_a_name_not_looked_up_keeps_what_was_served() -> None:
    served = Served()
    discovered_table(declared(), {"tasks.api:8080": ["10.0.1.3"]}, served, 0.0, never)

    table = discovered_table(declared(8), {}, served, 1.0, never)

    assert endpoints(table, "api") == ["10.0.1.3:8080"]
    assert table.generation == 8


def test_a_leaving_address_is_held_while_no_current_one_is_healthy_for_at_most_hold() -> None:
    served = Served()
    discovered_table(declared(), {"tasks.api:8080": ["10.0.1.3"]}, served, 0.0, never)
    replaced = {"tasks.api:8080": ["10.0.1.9"]}  # one-task node: the new task, the old gone

    held = discovered_table(declared(), replaced, served, 1.0, never)
    still = discovered_table(declared(), replaced, served, 1.0 + HOLD / 2, never)
    dropped = discovered_table(declared(), replaced, served, 1.0 + HOLD, never)

    assert endpoints(held, "api") == ["10.0.1.9:8080", "10.0.1.3:8080"]
    assert endpoints(still, "api") == ["10.0.1.9:8080", "10.0.1.3:8080"]
    assert endpoints(dropped, "api") == ["10.0.1.9:8080"]


def test_the_hold_ends_once_a_current_instance_is_healthy() -> None:
    served = Served()
    discovered_table(declared(), {"tasks.api:8080": ["10.0.1.3"]}, served, 0.0, never)
    replaced = {"tasks.api:8080": ["10.0.1.9"]}
    discovered_table(declared(), replaced, served, 1.0, never)

    table = discovered_table(declared(), replaced, served, 1.1, lambda e: e.host == "10.0.1.9")

    assert endpoints(table, "api") == ["10.0.1.9:8080"]
    assert served.leaving == {}


def test_an_empty_answer_empties_the_node_after_the_hold() -> None:
    served = Served()
    discovered_table(declared(), {"tasks.api:8080": ["10.0.1.3"]}, served, 0.0, never)

    gone: dict[str, list[str]] = {"tasks.api:8080": []}

    held = discovered_table(declared(), gone, served, 1.0, never)  # the hold starts now
    table = discovered_table(declared(), gone, served, 1.0 + HOLD, never)

    assert endpoints(held, "api") == ["10.0.1.3:8080"]
    assert endpoints(table, "api") == []
