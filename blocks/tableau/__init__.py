"""Blocks of the Tableau jobs: its personal access tokens (PATs), the PAT pool, and a connected app
(direct trust); and the site both sign in to (``TableauSite``, a field of the pool and of the app)."""

from blocks.tableau.connected_app import TableauConnectedApp
from blocks.tableau.pat import TableauPatPool, TableauPersonalAccessToken
from blocks.tableau.site import TableauSite

__all__ = ["TableauConnectedApp", "TableauPatPool", "TableauPersonalAccessToken", "TableauSite"]
