"""The dashboard's ranks: a tile per rank, or, above ``COMPACT_ABOVE`` ranks, a compact grid.

A tile shows one rank (``model.render.tile_html``) with its buttons: kill,
freeze / thaw, slow / full speed, debug. With many ranks (64 on one box) a
tile each would fill several screens, so the board draws one small cell per
rank, coloured by its state, and the tile of the rank selected (click a cell)
below the grid. Buttons call the ``TileActions`` the dashboard gives; the
board never calls the Job itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets

from elastic_nb.model.render import Tile, TileState, tile_html

COMPACT_ABOVE = 16  # more ranks than this: a grid of small cells and the selected rank's tile
_TILE_COLUMNS = "repeat(auto-fill, minmax(190px, 1fr))"
_GRID_COLUMNS = "minmax(0, 1fr) 260px"


@dataclass(frozen=True)
class TileActions:
    """What a tile's buttons and the grid's cells do (each takes the rank)."""

    kill: Callable[[int], None]
    debug: Callable[[int], None]
    freeze: Callable[[int], None]
    slow: Callable[[int], None]
    select: Callable[[int], None]


@dataclass
class TileWidgets:
    """One rank's tile: its text and its buttons."""

    body: widgets.HTML
    kill: widgets.Button
    debug: widgets.Button
    freeze: widgets.Button
    slow: widgets.Button

    def __post_init__(self) -> None:
        # short words, wrapped rather than cut: whole labels at 8 ranks in JupyterLab's width
        buttons = widgets.HBox([self.kill, self.freeze, self.slow, self.debug],
                               layout=widgets.Layout(flex_flow="row wrap"))
        self.box = widgets.VBox([self.body, buttons])


class TileBoard:
    """The ranks part of the dashboard: ``box`` is its widget, ``render(tiles)`` updates it
    (True if anything changed); ``tile(rank)``, ``ranks()``, ``cell(rank)``, ``select(rank)``."""

    def __init__(self, actions: TileActions) -> None:
        self._actions = actions
        self.box = widgets.GridBox(layout=widgets.Layout(grid_template_columns=_TILE_COLUMNS,
                                                         grid_gap="4px"))
        self.grid = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap", align_content="flex-start"))
        self.grid.add_class("enb-grid")
        self._tiles: dict[int, TileWidgets] = {}
        self._cells: dict[int, widgets.Button] = {}
        self.selected: int | None = None

    def tile(self, rank: int) -> TileWidgets:
        return self._tiles[rank]

    def ranks(self) -> list[int]:
        """The ranks that have a tile now (in the compact grid: the selected one)."""
        return sorted(self._tiles)

    def cell(self, rank: int) -> widgets.Button:
        """Rank ``rank``'s cell of the compact grid."""
        return self._cells[rank]

    def select(self, rank: int) -> None:
        """Show rank ``rank``'s tile below the compact grid."""
        self.selected = rank
        self._actions.select(rank)

    def render(self, current: list[Tile]) -> bool:
        if len(current) > COMPACT_ABOVE:
            return self._render_grid(current)
        if self._cells:  # the world shrank: back to a tile per rank
            self._cells, self._tiles = {}, {}
            self.box.layout.grid_template_columns = _TILE_COLUMNS
        return self._render_tiles(current)

    def _render_tiles(self, current: list[Tile]) -> bool:
        changed = False
        if [t.rank for t in current] != sorted(self._tiles) or not self.box.children:
            self._tiles = {t.rank: self._tiles.get(t.rank) or self._new_tile(t.rank)
                           for t in current}
            self.box.children = [self._tiles[t.rank].box for t in current]
            changed = True
        for t in current:
            changed |= _update(self._tiles[t.rank], t)
        return changed

    def _render_grid(self, current: list[Tile]) -> bool:
        ranks = [t.rank for t in current]
        changed = False
        if ranks != sorted(self._cells):
            self._cells = {r: self._cells.get(r) or self._new_cell(r) for r in ranks}
            self.grid.children = [self._cells[r] for r in ranks]
            changed = True
        if self.selected not in ranks:
            self.selected = ranks[0]
        for t in current:
            cell = self._cells[t.rank]
            changed |= set_if_changed(cell.style, "button_color", t.color)
            changed |= set_if_changed(cell, "tooltip", f"rank {t.rank}: {t.state}")
        chosen = next(t for t in current if t.rank == self.selected)
        if chosen.rank not in self._tiles:
            self._tiles = {chosen.rank: self._new_tile(chosen.rank)}
        tile = self._tiles[chosen.rank]
        if tuple(self.box.children) != (self.grid, tile.box):
            self.box.layout.grid_template_columns = _GRID_COLUMNS  # the cells, then the tile
            self.box.children = [self.grid, tile.box]
            changed = True
        return changed | _update(tile, chosen)

    def _new_tile(self, rank: int) -> TileWidgets:
        def button(label: str, tooltip: str, action: Callable[[int], None],
                   style: str) -> widgets.Button:
            made = widgets.Button(description=label, tooltip=tooltip, button_style=style,
                                  layout=widgets.Layout(width="auto", min_width="fit-content",
                                                        flex="0 0 auto", padding="0 8px"))
            made.on_click(lambda _: action(rank))
            made.add_class("enb-tile-button")
            return made

        actions = self._actions
        return TileWidgets(
            widgets.HTML(),
            button("kill", f"kill rank {rank} with the signal chosen below", actions.kill, "danger"),
            button("debug", f"debug rank {rank} (paused in its debugger)", actions.debug, "info"),
            button("freeze", f"freeze or thaw rank {rank} (SIGSTOP / SIGCONT)", actions.freeze,
                   "primary"),
            button("slow", f"make rank {rank} a straggler, or back to full speed", actions.slow,
                   ""))

    def _new_cell(self, rank: int) -> widgets.Button:
        cell = widgets.Button(description=str(rank), layout=widgets.Layout(
            width="40px", height="24px", padding="0", margin="1px"))
        cell.on_click(lambda _: self.select(rank))
        cell.add_class("enb-cell")
        return cell


def _update(tile: TileWidgets, t: Tile) -> bool:
    killable = t.state.killable
    changed = set_if_changed(tile.body, "value", tile_html(t))
    changed |= set_if_changed(tile.kill, "disabled", not killable)
    changed |= set_if_changed(tile.debug, "disabled", t.state != TileState.PAUSED)
    changed |= set_if_changed(tile.freeze, "description", "thaw" if t.state == TileState.FROZEN else "freeze")
    changed |= set_if_changed(tile.freeze, "disabled", not killable)
    changed |= set_if_changed(tile.slow, "description", "full" if t.slowed is not None else "slow")
    changed |= set_if_changed(tile.slow, "disabled", not killable)
    return changed


def set_if_changed(widget: object, name: str, value: object) -> bool:
    """Set a widget's trait only when it changes (each change is a message to the browser)."""
    if getattr(widget, name) == value:
        return False
    setattr(widget, name, value)
    return True
