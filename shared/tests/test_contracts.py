"""The job catalogue's own consistency, which the gateway's queries rely on."""

from __future__ import annotations

from medialens_shared.contracts import JOB_TYPES, PART_ORDER


def test_every_composite_lists_its_parts_in_the_one_order_its_children_are_read_in() -> None:
    """A composite's `children` are ordered by `PART_ORDER`, one order for all composites: a composite that
    listed parts it shares with another in another order would have them read in the other's."""
    for spec in JOB_TYPES.values():
        assert [part for part in PART_ORDER if part in spec.children] == list(spec.children), spec.name
