"""Prefect block types of analytics-flows.

Register them with ``prefect block register -m blocks``.
"""

from blocks.tableau import TableauPatPool, TableauPersonalAccessToken, TableauSite

__all__ = ["TableauPatPool", "TableauPersonalAccessToken", "TableauSite"]
