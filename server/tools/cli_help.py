"""Help that shows real metavars: a flag takes no value, so `--help` shows none for it, and an
option's value is named after the option (`--port PORT`), not after its type.

Typer labels every option with its type, flags too (`--json <bool>`, `--port <int>`). The
command and group classes here give flags an empty metavar and other options their name;
`use_real_metavars(app)` makes every command and group of an app (registered so far,
recursively) use them.
"""

from __future__ import annotations

from typing import Any

import click
import typer
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.models import DefaultPlaceholder

from server.tools.cli_shared import TandemGroup


class FlagsTakeNoValue:
    """Before help or parsing reads the parameters, flags get an empty metavar and options
    without one their own name in capitals."""

    def get_params(self, ctx: click.Context) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if isinstance(param, TyperOption) and param.metavar is None:
                param.metavar = "" if param.is_flag else (param.name or "value").upper()
        return params


class TandemCommand(FlagsTakeNoValue, TyperCommand):
    pass


class TandemSubgroup(FlagsTakeNoValue, TyperGroup):
    pass


class TandemRootGroup(FlagsTakeNoValue, TandemGroup):
    """The `tandem` group itself (a closed stdout still exits 141: server/tools/cli_shared.py)."""


def use_real_metavars(app: typer.Typer) -> None:
    """Every command and sub-group of `app` without a class of its own uses the classes above."""
    for command in app.registered_commands:
        if command.cls is None or command.cls is TyperCommand:
            command.cls = TandemCommand
    for group in app.registered_groups:
        sub = group.typer_instance
        if sub is not None:
            if isinstance(sub.info.cls, DefaultPlaceholder) or sub.info.cls is None:
                sub.info.cls = TandemSubgroup
            use_real_metavars(sub)
