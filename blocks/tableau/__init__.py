"""Blocks of the Tableau jobs: the site, its personal access tokens (PATs) and the PAT pool."""

from blocks.tableau.pat import TableauPatPool, TableauPersonalAccessToken
from blocks.tableau.site import TableauSite

__all__ = ["TableauPatPool", "TableauPersonalAccessToken", "TableauSite"]
