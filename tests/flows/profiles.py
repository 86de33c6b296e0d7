"""Output profiles the flow tests run with."""

from __future__ import annotations

from config.domain.vocabulary import OutputKind
from config.settings import OutputRoute, OutputSettings

#: Every object for every study, plain copies of negative views too: for viewers that
#: show them all (and tests that look at each kind).
EVERY_OBJECT = OutputSettings(
    negative_views="plain",
    routes=(
        OutputRoute(
            kinds=(
                OutputKind.SR,
                OutputKind.SUMMARY,
                OutputKind.ANNOTATED,
                OutputKind.GSPS,
                OutputKind.PARAMETRIC_MAP,
            )
        ),
    ),
)
