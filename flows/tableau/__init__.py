"""The Tableau refresh flows: a business domain's extract refreshes through a leased PAT."""
