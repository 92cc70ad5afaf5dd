"""Reading ``/metrics`` in tests with the reference parser (prometheus_client's), so a
test checks values, not the text layout."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample as ``(name, labels) -> value``."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    """The value of the one sample ``name{labels}`` (KeyError if there is none)."""
    return samples(text)[(name, frozenset(labels.items()))]


def values(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample named ``name``, by its labels."""
    return {labels: v for (n, labels), v in samples(text).items() if n == name}
