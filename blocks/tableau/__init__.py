"""Blocks of the Tableau jobs: the site, its personal access tokens (PATs), the PAT pool, and a
connected app (direct trust)."""

from blocks.tableau.connected_app import TableauConnectedApp
from blocks.tableau.pat import TableauPatPool, TableauPersonalAccessToken
from blocks.tableau.site import TableauSite

__all__ = ["TableauConnectedApp", "TableauPatPool", "TableauPersonalAccessToken", "TableauSite"]
